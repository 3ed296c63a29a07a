"""Tensors already in memory: the result of an --unsafe-pickle load that was not a module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modinspect.sources.base import EntrySummary, Source
from modinspect.sources.module import _info

if TYPE_CHECKING:
    import torch


class TensorDictSource(Source):
    def __init__(
        self,
        state: dict[str, Any],
        label: str,
        fmt: str,
        state_dict_key: str | None = None,
        other_entries: list[EntrySummary] | None = None,
    ) -> None:
        import torch

        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        infos = [
            _info(
                k,
                v,
                "parameter" if isinstance(v, torch.nn.Parameter) else "unknown",
                requires_grad=v.requires_grad if isinstance(v, torch.nn.Parameter) else None,
            )
            for k, v in self._state.items()
        ]
        super().__init__(
            label=label,
            format=fmt,
            tensors=infos,
            state_dict_key=state_dict_key,
            other_entries=list(other_entries or []),
        )

    def _read(self, name: str) -> torch.Tensor:
        return self._state[name].detach().cpu()
