"""How a SOURCE is opened: the options every reader takes, and the signature of the file opener that
readers holding other files (a sharded index, a PEFT adapter) are given by the dispatcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modinspect.sources.hf_layers import DEFAULT_MAX_LAYERS
from modinspect.sources.pickle.check import DEFAULT_MAX_PICKLE

if TYPE_CHECKING:  # the gate is imported when a pickle is read: a safetensors diff never needs it
    from modinspect.sources.base import Source
    from modinspect.sources.pickle.gate import Gate


@dataclass(frozen=True)
class OpenOptions:
    unsafe_pickle: bool = False
    model_weights: str = (
        "header"  # a config.json directory's model: "header" (meta), "init" or "pretrained"
    )
    plain_dir: bool = (
        False  # a directory's weights only, without its DCP / PEFT / config.json reader
    )
    allow_globals: frozenset[str] = frozenset()
    max_pickle_bytes: int = DEFAULT_MAX_PICKLE
    max_layers: int = DEFAULT_MAX_LAYERS  # a config.json's layers built at most (--max-layers)

    def gate(self, label: str) -> Gate:
        """The pickle gate; its refusals name the file as the user gave it."""
        from modinspect.sources.pickle.gate import Gate, GatePolicy

        return Gate(
            label,
            GatePolicy(allow_globals=self.allow_globals, max_pickle_bytes=self.max_pickle_bytes),
        )


# open_file(path, label, options, storage_prefix=None) -> Source: the dispatcher's single-file opener.
FileOpener = Callable[..., "Source"]
