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

from modinspect.errors import CorruptFileError, ModelTooLargeError, UnknownFormatError, UsageError
from modinspect.sources.base import Source, TensorInfo
from modinspect.sources.hf_layers import CONFIG_NAME, DEFAULT_MAX_LAYERS, check_layers
from modinspect.sources.hf_names import ignored_on_load, transformers_names
from modinspect.sources.kinds import checkpoint_kind

if TYPE_CHECKING:
    import torch
    from torch import nn

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
        return (
            f"{label}/{CONFIG_NAME} maps its classes to code in the directory (auto_map); modinspect does not run "
            "a checkpoint's code (trust_remote_code): pass the model as an entry point, file.py:NAME"
        )
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


def build_model(
    folder: Path, label: str, weights: ModelWeights, max_layers: int = DEFAULT_MAX_LAYERS
) -> Any:
    """The transformers model of `folder`'s config.json: on the meta device, randomly initialised, or pretrained."""
    raw = read_config(folder)
    why = refusal(raw, label)
    if why is not None:
        raise UsageError(why)
    check_layers(raw, label, max_layers)
    import torch
    from transformers import AutoConfig

    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False
            )
        except (ValueError, KeyError, OSError) as exc:
            raise UsageError(
                f"{label}/{CONFIG_NAME} is not a config this transformers builds ({exc})"
            ) from None
        cls = _model_class(raw)
        if weights == "pretrained":
            return cls.from_pretrained(
                str(folder),
                config=config,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
            ).eval()
        if weights == "header":
            with torch.device("meta"):
                model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
        else:
            model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    return model.eval()


def has_transformers() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):  # a broken entry in sys.modules
        return True


def transformers_import_error() -> str | None:
    """Why the installed transformers cannot be imported (a version clash, a broken install), or None."""
    try:
        import transformers

        transformers.AutoConfig  # noqa: B018  (its lazy module imports what building a model needs here)
        transformers.PreTrainedModel  # noqa: B018
    except Exception as exc:
        return _short(exc)
    return None


def _short(exc: BaseException) -> str:
    """`exc` as one short line: its type and the first line of its message."""
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


PACKED_WEIGHTS = (
    "qweight",
    "weight_packed",
)  # what GPTQ/AWQ and compressed-tensors store a Linear's weight as


class HfDirSource(Source):
    """The directory's weights (header-only, read on request) arranged by the model built from config.json.

    Stored names are matched to the model's as from_pretrained matches them (`transformers_names`): a renamed
    tensor is shown under the model's name; pieces a converter merges are shown under their stored names
    and counted from the file, as is any stored tensor the model does not name.
    """

    def __init__(self, folder: Path, label: str, weights: Source, model: nn.Module) -> None:
        from modinspect.sources.module import module_infos, module_tensor_infos

        self._weights = weights
        self._alias: dict[str, str] = {}  # model name -> the stored name its data is read from
        self._computed: set[str] = (
            set()
        )  # non-persistent buffers: the model makes them, the file has none
        infos = module_tensor_infos(model)
        model_kind = {m.name: m for m in infos}
        renamed = transformers_names(model, weights.names(), model_kind.keys())
        stored = {t.name: t for t in weights.tensors}
        by_model_name = dict(stored)
        converted: dict[
            str, list[str]
        ] = {}  # model name -> the stored pieces a converter builds it from
        moved: list[tuple[str, str]] = []  # (stored name, the model's name for it)
        for name, (target, conversion) in renamed.items():
            wanted, have = model_kind.get(target), stored[name]
            if conversion:
                converted.setdefault(target, []).append(name)
            elif wanted is not None and target not in by_model_name and wanted.shape == have.shape:
                by_model_name[target] = have
                self._alias[target] = name
                moved.append((name, target))
        tensors: list[TensorInfo] = []
        by_storage: dict[str | None, str] = {}
        absent: list[str] = []
        used: set[str] = set()
        for m in infos:
            s = by_model_name.get(m.name)
            if (
                s is None and m.storage in by_storage
            ):  # tied to a stored tensor: the file keeps one name
                s = by_model_name[by_storage[m.storage]]
                self._alias[m.name] = s.name
            if (
                s is None and m.persistent is False
            ):  # never stored: known from the model alone, as torch knows it
                tensors.append(m)
                self._computed.add(m.name)
                continue
            if s is None:
                if m.name not in converted:
                    absent.append(m.name)
                continue
            used.add(s.name)
            by_storage.setdefault(m.storage, m.name)
            tensors.append(
                TensorInfo(
                    m.name,
                    s.shape,
                    s.dtype,
                    s.nbytes,
                    m.kind,
                    s.storage,
                    m.requires_grad,
                    m.persistent,
                )
            )
        extra = [t for t in weights.tensors if t.name not in used]
        ignored = ignored_on_load(model, [t.name for t in extra if t.name not in renamed])
        pieces = {piece: target for target, names in converted.items() for piece in names}
        for t in extra:
            whole = model_kind.get(pieces.get(t.name, ""))
            if whole is not None:  # a piece of a model tensor: that tensor's kind
                kind, grad = whole.kind, whole.requires_grad
            else:  # not in the model: counted from the file, as a bare state dict's tensors are
                kind, grad = checkpoint_kind(t.name), None
                if kind == "unknown" and t.name not in ignored:
                    kind = "parameter"
            tensors.append(TensorInfo(t.name, t.shape, t.dtype, t.nbytes, kind, t.storage, grad))
        notes = [
            f"model built from {CONFIG_NAME} on the meta device: {type(model).__name__}; weights read from "
            f"{weights.label} (header only)"
        ]
        if moved:
            notes.append(
                f"{len(moved)} stored tensors shown under the names from_pretrained loads them as (e.g. "
                f"{moved[0][0]} -> {moved[0][1]})"
            )
        packed = {
            n: n[:-6] + p
            for n in absent
            if n.endswith(".weight")
            for p in PACKED_WEIGHTS
            if n[:-6] + p in stored
        }
        if packed:  # GPTQ/AWQ/compressed-tensors store the float weight packed, under another name
            absent = [n for n in absent if n not in packed]
            first = next(iter(packed))
            notes.append(
                f"{len(packed)} model weights are stored packed by the quantization (e.g. {first} as "
                f"{packed[first]})"
            )
        if absent:
            notes.append(f"{len(absent)} model tensors are not in the weights (e.g. {absent[0]})")
        if pieces:
            first = next(iter(pieces))
            notes.append(
                f"{len(pieces)} stored tensors are pieces transformers converts into {len(converted)} model "
                f"tensors on load (e.g. {first} -> {pieces[first]}): listed under their stored names, "
                "counted from the file"
            )
        strangers = [t for t in extra if t.name not in pieces]
        if strangers:
            from modinspect.sources.layout_hints import legacy_layout_hint

            hint = legacy_layout_hint(model, [t.name for t in strangers])
            counted = [t for t in strangers if t.name not in ignored]
            quantized = isinstance(read_config(folder).get("quantization_config"), dict)
            notes.append(
                f"{len(strangers)} stored tensors are not in the model (e.g. {strangers[0].name})"
                + (
                    ": the quantization's (its layers are counted as the note on them says)"
                    if quantized
                    else f": {len(counted)} counted from the file"
                    if counted
                    else ""
                )
                + (
                    f"; {len(strangers) - len(counted)} that transformers ignores on load, not counted"
                    if len(counted) < len(strangers)
                    else ""
                )
                + (f": {hint}" if hint else "")
            )
        super().__init__(
            label=label,
            format=f"hf-{weights.format}",
            tensors=tensors,
            modules=module_infos(model),
            module=model,
            metadata=dict(weights.metadata),
            notes=notes,
            warnings=list(weights.warnings),
            would_call=list(weights.would_call),
        )

    def _read(self, name: str) -> torch.Tensor:
        self._check_stored(name)
        return self._weights.read_tensor(self._alias.get(name, name))

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        self._check_stored(name)
        return self._weights.iter_chunks(self._alias.get(name, name), chunk_elems)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        return (
            None
            if name in self._computed
            else self._weights.byte_range(self._alias.get(name, name))
        )

    def _check_stored(self, name: str) -> None:
        if name in self._computed:
            raise UsageError(
                f"{self.label}: {name} is a non-persistent buffer: the directory does not store it and "
                "the model computes it when built; pass the directory as a MODEL (stats) to see it"
            )

    def close(self) -> None:
        self._weights.close()


def open_hf_dir(
    folder: Path,
    label: str,
    weights: Source | None,
    mode: ModelWeights,
    missing: Exception | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> Source:
    """`folder` as a SOURCE; the weights are closed when it fails."""
    try:
        source = _open_hf_dir(folder, label, weights, mode, missing, max_layers)
    except BaseException:
        if weights is not None:
            weights.close()
        raise
    quantization = read_config(folder).get("quantization_config")
    if isinstance(quantization, dict):  # how the weights were quantized, for analysis.quant
        source.quantization_config = quantization
    return source


def _open_hf_dir(
    folder: Path,
    label: str,
    weights: Source | None,
    mode: ModelWeights,
    missing: Exception | None,
    max_layers: int,
) -> Source:
    """`folder` as a SOURCE: header mode wraps its weights, the other modes give the runnable model.

    `missing` is the error to raise when the directory has no weights and its config builds no model.
    """
    from modinspect.sources.module import ModuleSource

    raw = read_config(folder)
    installed = has_transformers()
    wanted = mode != "header" or bool(raw.get("model_type"))
    buildable = installed and wanted and refusal(raw, label) is None
    if buildable:
        check_layers(
            raw, label, max_layers
        )  # before transformers is imported: a refusal costs nothing
    broken = transformers_import_error() if buildable else None
    if not installed or broken is not None or not wanted:
        if mode != "header":
            need = (
                f", which fails to import ({broken})"
                if broken
                else " (pip install 'modinspect[hf]')"
            )
            raise UsageError(
                f"{label} is a Hugging Face directory: building its model needs transformers{need}"
            )
        if weights is None:
            raise missing or UnknownFormatError(f"{label} holds a config.json but no weights")
        if broken is not None:
            weights.notes.append(
                f"{CONFIG_NAME} not used: transformers is installed but fails to import "
                f"({broken}); showing the weights alone"
            )
        elif raw.get("model_type"):
            weights.notes.append(
                f"{CONFIG_NAME} found: install transformers (pip install 'modinspect[hf]') to "
                "see the model's classes, module order and tied weights"
            )
        return weights
    why = refusal(raw, label)
    if why is not None:
        if mode != "header" or weights is None:
            raise UsageError(why)
        weights.notes.append(
            f"{CONFIG_NAME} not used: {why.split(': ')[0].removeprefix(label + '/')}"
        )
        return weights
    if mode == "pretrained" and (weights is None or "safetensors" not in weights.format):
        return _init_then_load(folder, label, weights, max_layers)
    try:
        try:
            model = build_model(folder, label, mode, max_layers)
        except (
            ImportError
        ) as exc:  # transformers imports a model's module (or its dependencies) on first use
            raise UsageError(
                f"{label}/{CONFIG_NAME} needs a part of transformers that fails to import "
                f"({_short(exc)})"
            ) from None
    except UsageError as exc:
        if mode != "header" or weights is None or isinstance(exc, ModelTooLargeError):
            raise
        weights.notes.append(f"{CONFIG_NAME} not used: {str(exc).removeprefix(label + '/')}")
        return weights
    if mode != "header":
        note = (
            "weights from the directory (from_pretrained)"
            if mode == "pretrained"
            else "randomly initialised"
        )
        if weights is not None:
            weights.close()
        return ModuleSource(
            model,
            label,
            "hf-model",
            notes=[f"{type(model).__name__} built from {CONFIG_NAME}; {note}"],
        )
    if weights is None:
        return ModuleSource(
            model,
            label,
            "hf-config",
            notes=[
                f"{type(model).__name__} built from {CONFIG_NAME} on the meta device; no weights"
            ],
        )
    return HfDirSource(folder, label, weights, model)


def _init_then_load(folder: Path, label: str, weights: Source | None, max_layers: int) -> Source:
    """Pickled (.bin) weights: from_pretrained would torch.load them, so they go through modinspect's gate;
    the model is built here and the weights are left open on `pending_weights` for the run layer to load."""
    from modinspect.sources.module import ModuleSource

    model = build_model(folder, label, "init", max_layers)
    src = ModuleSource(
        model, label, "hf-model", notes=[f"{type(model).__name__} built from {CONFIG_NAME}"]
    )
    if weights is None:
        src.notes.append("no weights in the directory: randomly initialised")
        return src
    src.pending_weights = (
        weights  # loaded by run.source.open_source: a reader never runs load_state_dict
    )
    return src
