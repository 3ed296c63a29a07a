"""A quantized source seen as the float model it stands for: each quantized weight dequantised, a chunk of
rows at a time, under its float name; the auxiliary tensors (scales, zeros, g_idx, absmax...) used, not listed.

`dequantized(source)` wraps a GGUF file with block-quantised tensors (Q4_K, ...) or a checkpoint in which
analysis/quant.py finds quantized layers (GPTQ, AWQ, bitsandbytes, compressed-tensors, FP8 block scales,
torch.ao); `diff` compares the view with a float checkpoint as it compares any two sources, streamed. Each
dequantised tensor's scheme and bits per weight are in `DequantizedSource.schemes`.

Everything read is checked against the shapes it must have before anything is computed from it: a packed
tensor whose groups, blocks or scales do not fit its weight is a CorruptFileError naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from modinspect import dtypes
from modinspect.analysis.quant import scan_quantization
from modinspect.errors import CorruptFileError
from modinspect.sources.base import Source, TensorInfo, WrappedSource

if TYPE_CHECKING:
    import torch

__all__ = ["DequantizedSource", "Scheme", "dequantized", "is_quantized"]

# Rows is a function of (r0, r1) -> float32 [r1 - r0, cols]; cols = the logical shape's last dim.
Rows = Callable[[int, int], "torch.Tensor"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Scheme:
    """How one dequantised tensor was stored: the scheme's short name and its bits per weight."""

    scheme: str
    bits_per_weight: float


@dataclass
class _Plan:
    info: TensorInfo  # the float tensor it stands for
    scheme: Scheme | None  # None: a float tensor only renamed (torch.ao's bias)
    make: Callable[[], Rows]  # reads the stored tensors, checks them, returns the row function


def is_quantized(source: Source) -> bool:
    """Whether `source` holds tensors `dequantized` would dequantise."""
    if _gguf_blocks(source):
        return True
    return bool(scan_quantization(source))


def dequantized(source: Source) -> DequantizedSource | None:
    """`source` with its quantized tensors dequantised (a view: nothing is read until asked), or None when
    it has none."""
    if _gguf_blocks(source):
        plans, hidden = _gguf_plans(source), set[str]()
    else:
        plans, hidden = _checkpoint_plans(source)
    if not plans:
        return None
    return DequantizedSource(source, plans, hidden)


class DequantizedSource(WrappedSource[Source]):
    """A source's tensors with each quantized weight replaced by its float32 dequantisation."""

    def __init__(
        self, inner: Source, plans: dict[str, tuple[str, _Plan]], hidden: set[str] | None = None
    ) -> None:
        # plans: stored name of the packed weight -> (float name, plan); `hidden`: the auxiliary tensors
        self.plans = {new: plan for new, plan in plans.values()}
        hidden = hidden or set()
        tensors = [
            plans[t.name][1].info if t.name in plans else t
            for t in inner.tensors
            if t.name in plans or t.name not in hidden
        ]
        self.schemes = {n: p.scheme for n, p in self.plans.items() if p.scheme is not None}
        super().__init__(inner, tensors)

    def _rows(self, name: str) -> tuple[Rows, int, int]:
        plan = self.plans[name]
        shape = plan.info.shape
        cols = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if shape else 1
        rows_of = self._guarded(name, plan.make)()
        return lambda r0, r1: self._guarded(name, lambda: rows_of(r0, r1))(), rows, cols

    def _guarded(self, name: str, call: Callable[[], _T]) -> Callable[[], _T]:
        """`call` with torch's errors on the file's numbers (shapes the checks let through, dtypes torch
        cannot shift) turned into one line naming the tensor: they come from the file, not from a bug here."""

        def run() -> _T:
            try:
                return call()
            except (RuntimeError, IndexError, ValueError, TypeError) as exc:
                scheme = self.schemes.get(name)
                said = (
                    str(exc).strip().splitlines()[0][:200]
                    if str(exc).strip()
                    else type(exc).__name__
                )
                raise CorruptFileError(
                    f"{self.label}: cannot dequantize {name!r}"
                    f"{f' ({scheme.scheme})' if scheme else ''}: {said}"
                ) from exc

        return run

    def _read(self, name: str) -> torch.Tensor:
        if name not in self.plans:
            return super()._read(name)
        rows_of, rows, _cols = self._rows(name)
        return rows_of(0, rows).reshape(self.plans[name].info.shape)

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        if name not in self.plans:
            yield from super()._chunks(name, chunk_elems)
            return
        rows_of, rows, cols = self._rows(name)
        step = max(1, chunk_elems // max(cols, 1))
        yield from _exact(
            (rows_of(r, min(r + step, rows)).reshape(-1) for r in range(0, rows, step)),
            chunk_elems,
        )

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        return None if name in self.plans else super().byte_range(name)

    def byte_ranges(self, names: Iterable[str]) -> list[tuple[Path, int, int] | None]:
        return [self.byte_range(n) for n in names]


def _exact(pieces: Iterable[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """The concatenation of `pieces` cut into chunks of exactly n elements (the last one shorter)."""
    import torch

    pending: list[torch.Tensor] = []
    count = 0
    for piece in pieces:
        pending.append(piece)
        count += piece.numel()
        if count < n:
            continue
        flat = torch.cat(pending) if len(pending) > 1 else pending[0]
        full = flat.numel() // n * n
        yield from torch.split(flat[:full], n)
        rest = flat[full:]
        pending, count = ([rest], rest.numel()) if rest.numel() else ([], 0)
    if count:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


# ------------------------------------------------------------------ GGUF


def _gguf_blocks(source: Source) -> list[TensorInfo]:
    if source.format != "gguf":
        return []
    return [t for t in source.tensors if t.dtype in _BLOCK]


_BLOCK = {d.name: d for d in dtypes.DTYPES if d.is_block}


def _gguf_plans(source: Source) -> dict[str, tuple[str, _Plan]]:
    plans = {}
    for t in _gguf_blocks(source):
        d = _BLOCK[t.dtype]
        bpw = d.block_bytes * 8 / d.block
        info = TensorInfo(t.name, t.shape, "float32", t.nbytes, "parameter")
        plans[t.name] = (t.name, _Plan(info, Scheme(t.dtype, bpw), _gguf_rows(source, t)))
    return plans


def _gguf_rows(source: Source, t: TensorInfo) -> Callable[[], Rows]:
    def make() -> Rows:
        from modinspect.analysis.dequant.gguf_blocks import dequantize_blocks

        where = source.byte_range(t.name)
        d = _BLOCK[t.dtype]
        cols = t.shape[-1] if t.shape else 1
        if where is None or cols % d.block:
            raise CorruptFileError(f"{source.label}: {t.name!r} has no {t.dtype} blocks to read")
        path, begin, nbytes = where
        row_bytes = cols // d.block * d.block_bytes
        rows = math.prod(t.shape[:-1]) if t.shape else 1
        if row_bytes * rows != nbytes:
            raise CorruptFileError(
                f"{source.label}: {t.name!r} holds {nbytes:,} bytes, not the {row_bytes * rows:,} that "
                f"{rows:,} rows of {cols:,} {t.dtype} elements take"
            )

        def rows_of(r0: int, r1: int) -> torch.Tensor:
            import torch

            with path.open("rb") as f:
                f.seek(begin + r0 * row_bytes)
                raw = f.read((r1 - r0) * row_bytes)
            if len(raw) != (r1 - r0) * row_bytes:
                raise CorruptFileError(f"{source.label} is truncated inside {t.name!r}")
            blocks = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, d.block_bytes)
            return dequantize_blocks(blocks, t.dtype).reshape(r1 - r0, cols)

        return rows_of

    return make


# ------------------------------------------------------------------ quantized checkpoints


def _checkpoint_plans(source: Source) -> tuple[dict[str, tuple[str, _Plan]], set[str]]:
    from modinspect.analysis.dequant.layers import layer_rows

    scan = scan_quantization(source)
    if not scan:
        return {}, set()
    config = source.quantization_config or {}
    names = {t.name for t in source.tensors}
    plans: dict[str, tuple[str, _Plan]] = {}
    hidden: set[str] = set()
    for layer in scan.layers:
        p = layer.module + "." if layer.module else ""
        new_name, make = layer_rows(source, layer, config, names)
        numel = math.prod(layer.shape)
        bpw = layer.bytes * 8 / numel if numel else 0.0
        info = TensorInfo(new_name, layer.shape, "float32", layer.bytes, "parameter")
        plans[layer.weight] = (new_name, _Plan(info, Scheme(layer.scheme, bpw), make))
        hidden |= set(layer.aux)
        bias = f"{p}_packed_params._packed_params.1"  # torch.ao keeps the bias in the packed params
        if bias in names and bias not in plans:
            t = source.info(bias)
            plans[bias] = (
                f"{p}bias",
                _Plan(replace(t, name=f"{p}bias"), None, _plain(source, bias)),
            )
    return plans, hidden


def _plain(source: Source, name: str) -> Callable[[], Rows]:
    def make() -> Rows:
        t = source.read_tensor(name)
        flat = t.reshape(-1, t.shape[-1] if t.dim() else 1)
        return lambda r0, r1: flat[r0:r1]

    return make
