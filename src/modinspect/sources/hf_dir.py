"""Hugging Face model directories: `config.json` beside the weights, the model built from the config.

With transformers installed, the model is built from config.json alone (no download, no custom
code: configs with `auto_map` are refused) on the meta device, so the tree has the model's real
classes, its module order and the tied weights the file omits (GPT-2's `lm_head.weight`), while
the weights stay header-only. As a MODEL (`stats`, `load`) the model is built for real: randomly
initialised, or with the directory's weights through `from_pretrained` (safetensors only).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modinspect.errors import CorruptFileError, UnknownFormatError, UsageError
from modinspect.sources.base import Source, TensorInfo
from modinspect.sources.kinds import checkpoint_kind

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
ModelWeights = Literal["header", "init", "pretrained"]


def read_json_object(path: Path, what: str = "JSON config") -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, adapter_config.json); CorruptFileError otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{path} is not a readable {what} ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} is not a JSON object")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / CONFIG_NAME)


def refusal(config: dict[str, Any], label: str) -> str | None:
    """Why this config cannot be built without running code from the directory, or None."""
    if config.get("auto_map"):
        return (f"{label}/{CONFIG_NAME} maps its classes to code in the directory (auto_map); modinspect does not run "
                "a checkpoint's code (trust_remote_code): pass the model as an entry point, file.py:NAME")
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _model_class(raw: dict[str, Any]) -> Any:
    import transformers

    for arch in raw.get("architectures") or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def build_model(folder: Path, label: str, weights: ModelWeights) -> Any:
    """The transformers model of `folder`'s config.json: on the meta device, randomly initialised, or pretrained."""
    import torch
    from transformers import AutoConfig

    raw = read_config(folder)
    why = refusal(raw, label)
    if why is not None:
        raise UsageError(why)
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except (ValueError, KeyError, OSError) as exc:
            raise UsageError(f"{label}/{CONFIG_NAME} is not a config this transformers builds ({exc})") from None
        cls = _model_class(raw)
        if weights == "pretrained":
            return cls.from_pretrained(str(folder), config=config, local_files_only=True, trust_remote_code=False,
                                       use_safetensors=True).eval()
        if weights == "header":
            with torch.device("meta"):
                model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
        else:
            model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    return model.eval()


def has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


class HfDirSource(Source):
    """The directory's weights (header-only, read on request) arranged by the model built from config.json."""

    def __init__(self, folder: Path, label: str, weights: Source, model: Any) -> None:
        from modinspect.sources.module import module_infos, module_tensor_infos

        self._weights = weights
        self._alias: dict[str, str] = {}
        stored = {t.name: t for t in weights.tensors}
        tensors: list[TensorInfo] = []
        by_storage: dict[str | None, str] = {}
        absent: list[str] = []
        for m in module_tensor_infos(model):
            s = stored.get(m.name)
            if s is None and m.storage in by_storage:  # tied to a stored tensor: the file keeps one name
                s = stored[by_storage[m.storage]]
                self._alias[m.name] = s.name
            if s is None:
                if m.persistent is not False:
                    absent.append(m.name)
                continue
            by_storage.setdefault(m.storage, s.name)
            tensors.append(TensorInfo(m.name, s.shape, s.dtype, s.nbytes, m.kind, s.storage, m.requires_grad,
                                      m.persistent))
        known = {t.name for t in tensors}
        extra = [t for t in weights.tensors if t.name not in known]
        tensors += [TensorInfo(t.name, t.shape, t.dtype, t.nbytes, checkpoint_kind(t.name), t.storage)
                    for t in extra]
        notes = [f"model built from {CONFIG_NAME} on the meta device: {type(model).__name__}; weights read from "
                 f"{weights.label} (header only)"]
        if absent:
            notes.append(f"{len(absent)} model tensors are not in the weights (e.g. {absent[0]})")
        if extra:
            from modinspect.analysis.layout_hints import legacy_layout_hint

            hint = legacy_layout_hint(model, [t.name for t in extra])
            notes.append(f"{len(extra)} stored tensors are not in the model (e.g. {extra[0].name})"
                         + (f": {hint}" if hint else ""))
        super().__init__(label=label, format=f"hf-{weights.format}", tensors=tensors,
                         modules=module_infos(model), module=model, metadata=dict(weights.metadata),
                         notes=notes, warnings=list(weights.warnings))

    def _read(self, name: str) -> torch.Tensor:
        return self._weights.read_tensor(self._alias.get(name, name))

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        return self._weights.iter_chunks(self._alias.get(name, name), chunk_elems)

    def close(self) -> None:
        self._weights.close()


def open_hf_dir(folder: Path, label: str, weights: Source | None, mode: ModelWeights,
                missing: Exception | None = None) -> Source:
    """`folder` as a SOURCE; the weights are closed when it fails."""
    try:
        return _open_hf_dir(folder, label, weights, mode, missing)
    except BaseException:
        if weights is not None:
            weights.close()
        raise


def _open_hf_dir(folder: Path, label: str, weights: Source | None, mode: ModelWeights,
                 missing: Exception | None) -> Source:
    """`folder` as a SOURCE: header mode wraps its weights, the other modes give the runnable model.

    `missing` is the error to raise when the directory has no weights and its config builds no model.
    """
    from modinspect.sources.module import ModuleSource

    raw = read_config(folder)
    if not has_transformers() or (mode == "header" and not raw.get("model_type")):
        if mode != "header":
            raise UsageError(f"{label} is a Hugging Face directory: building its model needs transformers "
                             "(pip install 'modinspect[hf]')")
        if weights is None:
            raise missing or UnknownFormatError(f"{label} holds a config.json but no weights")
        if raw.get("model_type"):
            weights.notes.append(f"{CONFIG_NAME} found: install transformers (pip install 'modinspect[hf]') to "
                                 "see the model's classes, module order and tied weights")
        return weights
    why = refusal(raw, label)
    if why is not None:
        if mode != "header" or weights is None:
            raise UsageError(why)
        weights.notes.append(f"{CONFIG_NAME} not used: {why.split(': ')[0].removeprefix(label + '/')}")
        return weights
    if mode == "pretrained" and (weights is None or "safetensors" not in weights.format):
        return _init_then_load(folder, label, weights)
    try:
        model = build_model(folder, label, mode)
    except UsageError as exc:
        if mode != "header" or weights is None:
            raise
        weights.notes.append(f"{CONFIG_NAME} not used: {str(exc).removeprefix(label + '/')}")
        return weights
    if mode != "header":
        note = "weights from the directory (from_pretrained)" if mode == "pretrained" else "randomly initialised"
        if weights is not None:
            weights.close()
        return ModuleSource(model, label, "hf-model", notes=[f"{type(model).__name__} built from {CONFIG_NAME}; {note}"])
    if weights is None:
        return ModuleSource(model, label, "hf-config",
                            notes=[f"{type(model).__name__} built from {CONFIG_NAME} on the meta device; no weights"])
    return HfDirSource(folder, label, weights, model)


def _init_then_load(folder: Path, label: str, weights: Source | None) -> Source:
    """Pickled (.bin) weights: from_pretrained would torch.load them, so they go through modinspect's gate."""
    from modinspect.sources.module import ModuleSource
    from modinspect.sources.weights import apply_weights

    model = build_model(folder, label, "init")
    src = ModuleSource(model, label, "hf-model", notes=[f"{type(model).__name__} built from {CONFIG_NAME}"])
    if weights is None:
        src.notes.append("no weights in the directory: randomly initialised")
        return src
    with weights:
        apply_weights(src, weights, strict=False)
    return src
