"""PEFT adapter directories: `adapter_config.json` plus `adapter_model.safetensors` (or `.bin`).

The weights are read by the single-file readers; the config adds what a user asks of an adapter:
its type, rank, alpha, target modules and base model. The ranks actually saved are read from the
shapes of the `lora_A` tensors, since `rank_pattern` can give modules ranks other than `r`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.errors import UnknownFormatError
from modinspect.sources.base import Source, TensorInfo
from modinspect.sources.hf_dir import read_json_object

if TYPE_CHECKING:
    import torch

    from modinspect.sources.options import FileOpener, OpenOptions

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# Tensors PEFT's LoRA layers own (saved without the adapter name: `lora_A.weight`, `lora_embedding_A`).
_LORA_A = re.compile(r"^(?P<module>.*)\.(lora_A|lora_embedding_A)(\.weight)?$")


def _read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, "JSON adapter config")


def _targets(config: dict[str, Any]) -> str:
    targets = config.get("target_modules")
    if isinstance(targets, list):
        return ", ".join(sorted(str(t) for t in targets))
    return str(targets) if targets is not None else "(none)"


def saved_ranks(tensors: list[TensorInfo]) -> dict[str, int]:
    """{adapted module: rank} from the first dimension of each module's lora_A tensor."""
    ranks = {}
    for t in tensors:
        m = _LORA_A.match(t.name)
        if m and t.shape:
            ranks[m["module"]] = t.shape[0]
    return ranks


class PeftAdapterSource(Source):
    """The adapter's tensors, with its config in the metadata and a summary in the notes."""

    def __init__(
        self, folder: Path, label: str, options: OpenOptions, open_file: FileOpener
    ) -> None:
        config = _read_config(folder / CONFIG_NAME)
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise UnknownFormatError(
                f"{label} has {CONFIG_NAME} but no {WEIGHT_NAMES[0]} or {WEIGHT_NAMES[1]}"
            )
        self._inner = open_file(weights, str(weights), options)
        tensors = [
            replace(t, kind="parameter") if "lora_" in t.name else t for t in self._inner.tensors
        ]
        peft_type = str(config.get("peft_type", "unknown"))
        base = config.get("base_model_name_or_path") or (config.get("auto_mapping") or {}).get(
            "base_model_class"
        )
        metadata = {"peft_type": peft_type, "target_modules": _targets(config)}
        for key in ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "task_type"):
            if config.get(key) is not None:
                metadata[key] = str(config[key])
        if base:
            metadata["base_model"] = str(base)
        ranks = saved_ranks(tensors)
        notes = [
            f"PEFT {peft_type} adapter"
            + (f" for {base}" if base else "")
            + (f": rank {config['r']}, alpha {config.get('lora_alpha')}" if "r" in config else "")
            + f", target modules {_targets(config)}"
        ]
        if ranks:
            by_rank: dict[int, int] = {}
            for r in ranks.values():
                by_rank[r] = by_rank.get(r, 0) + 1
            notes.append(
                "saved ranks: "
                + ", ".join(f"{r} ({n} modules)" for r, n in sorted(by_rank.items()))
            )
        super().__init__(
            label=label,
            format=f"peft-{self._inner.format}",
            tensors=tensors,
            metadata=metadata,
            notes=notes,
            warnings=list(self._inner.warnings),
            would_call=list(self._inner.would_call),
        )

    def _read(self, name: str) -> torch.Tensor:
        return self._inner.read_tensor(name)

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        return self._inner.iter_chunks(name, chunk_elems)

    def close(self) -> None:
        self._inner.close()
