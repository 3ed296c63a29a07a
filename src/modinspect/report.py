"""The frozen dataclasses every analysis returns: plain str/int/float/tuple, never tensors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    kind: str
    requires_grad: bool | None
    persistent: bool | None
    alias_of: str | None  # the first name of its tied group, when this one is a later alias

    @property
    def short(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ModuleRow:
    """One module in the flat list: counts are recursive, each storage once."""

    name: str
    type: str | None
    params: int
    bytes: int
    trainable: int | None
    training: bool | None


@dataclass(frozen=True)
class ModuleNode:
    """A node of the displayed tree; `repeat` > 1 stands for a run of identical blocks."""

    row: ModuleRow
    tensors: tuple[TensorRow, ...]
    children: tuple[ModuleNode, ...]
    repeat: int = 1
    last_name: str | None = None
    run_params: int = 0
    run_bytes: int = 0
    hidden: int = 0  # children and tensors cut by --depth

    @property
    def short(self) -> str:
        return self.row.name.rpartition(".")[2]


@dataclass(frozen=True)
class DtypeTotal:
    dtype: str
    elements: int
    bytes: int


@dataclass(frozen=True)
class Totals:
    params: int
    trainable: int | None
    frozen: int | None
    buffers: int | None
    persistent_buffers: int | None
    non_persistent_buffers: int | None
    bytes: int
    tensors: int


@dataclass(frozen=True)
class TreeReport:
    source: str
    format: str
    module_known: bool
    training: bool | None
    totals: Totals
    by_dtype: tuple[DtypeTotal, ...]
    modules: tuple[ModuleRow, ...]
    tensors: tuple[TensorRow, ...]
    tied: tuple[tuple[str, ...], ...]
    root: ModuleNode
    state_dict_key: str | None
    other_entries: tuple[tuple[str, str], ...]
    metadata: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    filter: str | None


@dataclass(frozen=True)
class Mismatch:
    """A key whose two sides differ: `model` is the model's side, `checkpoint` the checkpoint's."""

    name: str
    model: str
    checkpoint: str


@dataclass(frozen=True)
class Alias:
    name: str
    target: str


@dataclass(frozen=True)
class LoadPlan:
    loaded: tuple[str, ...]
    cast: tuple[Mismatch, ...]
    mismatched: tuple[Mismatch, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    tied: tuple[Alias, ...]

    @property
    def strict_ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)
