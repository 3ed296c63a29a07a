"""The transfer queue: a batch's per-call values queued on the device, packed into one vector, read back once.

Hooks only append (`TransferQueue.push`): 0-dim device scalars, 1-d device vectors and host numbers, each
call's values as one chunk `(kind, index, values)`. At the end of a batch (`stats`) or of a window (`watch`)
the queue is packed into one device vector (`pack`), copied to the host in one transfer (`to_host`) and
taken apart again (`unpack`). A chunk's layout is its record's field list (`reductions.chunk`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modinspect.run.reductions import GradTotals, Moments, ParamGradTotals, slot

if TYPE_CHECKING:
    import torch

    from modinspect.run.origins import Call, TensorRec

Slot = tuple[str, float]  # ("s", scalar index) | ("v", vector index) | ("h", host value)
Chunk = tuple[str, int, list[float]]  # (kind, module or tensor index, values)


def to_host(data: torch.Tensor | None) -> list[float]:
    """The one device->host copy of a packed batch (or of a `watch` window): everything else stays on the device."""
    return data.cpu().tolist() if data is not None else []


@dataclass
class Packed:
    """One batch's queued values as one device vector, and how to take them apart again."""

    data: torch.Tensor | None
    layout: list[tuple[str, int, list[Slot]]]
    order: list[int]  # scalar indices in the order they sit in `data`
    sizes: list[int]  # lengths of the vectors after the scalars
    scalars: int
    calls: list[Call]
    tensors: list[TensorRec]
    exact: bool


def _slots(record: type[Any], *names: str) -> tuple[int, ...]:
    return tuple(slot(record, n) for n in names)


# Which values of a chunk say it may hold NaN/Inf: flags or counts (> 0), or totals (not finite). Fast mode
# queues no flags of its own: a mean, M2 or sum of squares that is not finite says it all, and the host
# reads that from the values it receives anyway (no isfinite op per call on the device).
_FLAGS: dict[tuple[str, bool], tuple[int, ...]] = {
    ("call", False): (0, 1),  # [input held NaN/Inf, output did]
    ("call", True): (0, 1),
    ("loss", False): (0,),
    ("loss", True): (0,),
    ("stats", True): _slots(Moments, "nan", "inf"),
    ("grad", True): _slots(GradTotals, "nan", "inf"),
    ("pgrad", True): _slots(ParamGradTotals, "nan", "inf"),
}
_TOTALS: dict[tuple[str, bool], tuple[int, ...]] = {
    ("stats", False): _slots(Moments, "mean", "m2"),
    ("grad", False): _slots(GradTotals, "squares"),
    ("pgrad", False): _slots(ParamGradTotals, "squares"),
}


def suspect(kind: str, values: Sequence[float]) -> bool:
    """Whether a fast-mode chunk may hold NaN/Inf (then the batch is replayed exactly)."""
    key = (kind, False)  # no generators: this runs once per chunk, on the host
    for i in _FLAGS.get(key, ()):
        if values[i] > 0:
            return True
    return not all(map(math.isfinite, map(values.__getitem__, _TOTALS.get(key, ()))))


class TransferQueue:
    """The values waiting for the end-of-batch transfer, in the order the hooks queued them."""

    def __init__(self, acc: torch.dtype) -> None:
        self.acc = acc
        self.scalars: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.layout: list[tuple[str, int, list[Slot]]] = []

    def push(self, kind: str, index: int, values: Sequence[Any]) -> None:
        """Queue `values` (0-dim tensors, 1-d tensors or host numbers) for the transfer, in order."""
        import torch

        slots: list[Slot] = []
        for v in values:
            if isinstance(v, torch.Tensor):
                if v.dim() == 0:
                    slots.append(("s", len(self.scalars)))
                    self.scalars.append(v)
                else:
                    slots.append(("v", len(self.vectors)))
                    self.vectors.append(v.reshape(-1))
            else:
                slots.append(("h", float(v)))
        self.layout.append((kind, index, slots))

    def pack(self, calls: list[Call], tensors: list[TensorRec], exact: bool) -> Packed:
        """The queued values stacked into one device vector (scalars grouped by dtype, then the vectors)."""
        import torch

        groups: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(self.scalars):
            groups.setdefault(t.dtype, []).append(i)
        parts = [
            torch.stack([self.scalars[i] for i in idx]).to(self.acc) for idx in groups.values()
        ]
        parts += [v.to(self.acc) for v in self.vectors]
        data = torch.cat(parts) if parts else None
        order = [i for idx in groups.values() for i in idx]
        sizes = [v.numel() for v in self.vectors]
        return Packed(data, self.layout, order, sizes, len(self.scalars), calls, tensors, exact)

    def nonfinite_flag(self, exact: bool) -> torch.Tensor | None:
        """A 0-dim device bool: did anything queued so far hold NaN/Inf (or, in fast mode, look like it)?

        Built from the flags, counts and totals already queued: no reduction runs again. None when nothing can be bad.
        """
        import torch

        flags: list[torch.Tensor] = []  # > 0 means bad
        totals: list[
            torch.Tensor
        ] = []  # non-finite means bad (fast mode: a NaN/Inf or an overflow)
        for kind, _, slots in self.layout:
            key = (kind, exact)
            for indices, bucket in ((_FLAGS.get(key, ()), flags), (_TOTALS.get(key, ()), totals)):
                for i in indices:
                    where, ref = slots[i]
                    if where == "s":
                        bucket.append(self.scalars[int(ref)])
                    elif (ref > 0) if bucket is flags else not math.isfinite(ref):
                        return torch.ones((), dtype=torch.bool)
        # One stack each (it promotes mixed dtypes itself: a per-scalar cast costs more than the reductions).
        parts = []
        if flags:
            parts.append((torch.stack(flags) > 0).any())
        if totals:
            parts.append(~torch.isfinite(torch.stack(totals)).all())
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] | parts[1]


def unpack(packed: Packed, flat: Sequence[float]) -> list[Chunk]:
    """The chunks of one packed batch from its values as read back on the host."""
    scalar_values = [0.0] * packed.scalars
    pos = 0
    for i in packed.order:
        scalar_values[i] = flat[pos]
        pos += 1
    vector_values = []
    for size in packed.sizes:
        vector_values.append(list(flat[pos : pos + size]))
        pos += size
    chunks: list[Chunk] = []
    for kind, index, slots in packed.layout:
        values: list[float] = []
        for where, ref in slots:
            if where == "s":
                values.append(scalar_values[int(ref)])
            elif where == "v":
                values.extend(vector_values[int(ref)])
            else:
                values.append(ref)
        chunks.append((kind, index, values))
    return chunks
