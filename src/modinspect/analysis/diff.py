"""Compare the state dicts of two sources, one tensor pair at a time, in bounded chunks.

Memory stays flat: each pair is read as aligned 1-d chunks straight from disk (never a whole file,
never a mapping), compared at a precision that suits the dtype, and released before the next.

Where both tensors' bytes lie in files as is (safetensors, their shards), a pair of one dtype is first
compared byte for byte, at memcmp speed and without torch: identical bytes are identical values, so the
pair is equal and needs no arithmetic. Small pairs that are neighbours in both files are compared a run
at a time (one memcmp for up to a window of them). Only pairs whose bytes differ (or NaNs under
--nan-unequal) are read again as tensors, into the same reused buffers.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modinspect import dtypes
from modinspect.gcpause import paused_gc
from modinspect.names import (
    WRAPPER_PREFIXES,
    KeyMap,
    rollup_key,
    rollup_keys,
    suggest_prefix,
)
from modinspect.reports import (
    DiffReport,
    ModuleRollup,
    ModuleStatus,
    PairMismatch,
    QuantError,
    QuantModuleError,
    TensorDiff,
)
from modinspect.sources.base import Source, TensorInfo, from_little_endian, tied_groups
from modinspect.sources.byteread import WINDOW, ByteRange, PairReader

if TYPE_CHECKING:
    import torch

    from modinspect.analysis.dequant import Scheme

# torch.testing.assert_close's defaults: (rtol, atol)
DEFAULT_TOLERANCES = {d.name: d.tolerance for d in dtypes.DTYPES if d.tolerance is not None}
CHUNK = 1 << 20
FLOATS = dtypes.COMPUTE_FLOATS
# Dtypes whose bytes diff reads itself (the comparison below handles each of them).
BYTE_DTYPES = {d.name: d.itemsize for d in dtypes.DTYPES if d.diff_bytes}
NAN_DTYPES = {d.name for d in dtypes.DTYPES if d.diff_bytes and (d.is_float or d.is_complex)}
BYTEWISE_NOTE = "quantized: compared byte for byte"


@dataclass(frozen=True)
class DiffOptions:
    """How `diff_sources` compares: tolerances, bitwise mode, NaN handling, key names; the CLI's defaults.

    Attributes:
        atol: absolute tolerance; None: the looser of the two dtypes' torch.testing defaults.
        rtol: relative tolerance; None: likewise.
        exact: bitwise equality instead of tolerances.
        nan_equal: NaN equals NaN at the same position.
        keymap: how both sides' keys are rewritten before they are matched.
        chunk_elems: elements read at a time from each tensor of a pair (bounds the memory used).
        dequantize: a side with quantized tensors (GGUF's Q4_K, GPTQ, bitsandbytes, FP8, torch.ao...) against
            a side with none is compared dequantised, with the quantization error of each tensor and module.
    """

    atol: float | None = None
    rtol: float | None = None
    exact: bool = False  # bitwise equality
    nan_equal: bool = True
    keymap: KeyMap = field(default_factory=KeyMap)
    chunk_elems: int = CHUNK
    dequantize: bool = True


def tolerance_for(dtype_a: str, dtype_b: str, options: DiffOptions) -> tuple[float, float]:
    """(rtol, atol): the options', else the looser of the two dtypes' torch.testing defaults."""
    if options.exact:
        return 0.0, 0.0
    ra, aa = DEFAULT_TOLERANCES.get(dtype_a, (0.0, 0.0))
    rb, ab = DEFAULT_TOLERANCES.get(dtype_b, (0.0, 0.0))
    rtol = options.rtol if options.rtol is not None else max(ra, rb)
    atol = options.atol if options.atol is not None else max(aa, ab)
    return rtol, atol


@dataclass
class _Acc:
    """Running sums of one tensor pair's comparison, in Python floats (float64)."""

    differing: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    finite_pairs: int = 0
    sq_diff: float = 0.0
    sq_a: float = 0.0
    sq_b: float = 0.0
    dot: float = 0.0
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    bit_differs: int = 0


def _compare_chunk(
    a: object,
    b: object,
    acc: _Acc,
    rtol: float,
    atol: float,
    options: DiffOptions,
    scratch: _Scratch,
) -> None:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.is_complex() or b.is_complex():
        a, b = (
            torch.view_as_real(a.to(torch.complex128)).reshape(-1),
            torch.view_as_real(b.to(torch.complex128)).reshape(-1),
        )
    if options.exact and a.dtype == b.dtype and a.element_size() in (1, 2, 4, 8):
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        acc.bit_differs += int(torch.count_nonzero(a.view(ints) != b.view(ints)))
    floating = a.is_floating_point() or b.is_floating_point()
    if not floating:  # integers and bools: exact, in int64
        ai, bi = a.to(torch.int64), b.to(torch.int64)
        d = (ai - bi).abs_()
        differing = int(torch.count_nonzero(d))
        acc.differing += differing
        if differing:
            acc.max_abs = max(acc.max_abs, float(d.max()))
        acc.sum_abs += float(d.sum())
        acc.finite_pairs += d.numel()
        af, bf = ai.double(), bi.double()
        acc.sq_diff += float(torch.dot(d.double(), d.double()))
        acc.sq_a += float(torch.dot(af, af))
        acc.sq_b += float(torch.dot(bf, bf))
        acc.dot += float(torch.dot(af, bf))
        return
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    af, bf = a.to(work), b.to(work)
    # The squared norms are needed anyway and double as the finiteness test: a NaN/Inf (or an
    # overflow, which the exact path handles just as well) makes them non-finite.
    sq_a, sq_b = float(torch.dot(af, af)), float(torch.dot(bf, bf))
    if math.isfinite(sq_a) and math.isfinite(sq_b):
        acc.sq_a += sq_a
        acc.sq_b += sq_b
        _finite_chunk(af, bf, acc, rtol, atol, scratch)
    else:
        _nonfinite_chunk(af, bf, acc, rtol, atol, options.nan_equal)


class _Scratch:
    """Reused work tensors for the elementwise passes: a fresh 4 MiB tensor per pass is page faults."""

    def __init__(self) -> None:
        self._tensors: dict[tuple[torch.dtype, int], torch.Tensor] = {}

    def get(self, dtype: torch.dtype, slot: int, n: int) -> torch.Tensor:
        """A tensor of `n` elements of `dtype`, the same memory each time for one (dtype, slot)."""
        import torch

        t = self._tensors.get((dtype, slot))
        if t is None or t.numel() < n:
            t = self._tensors[dtype, slot] = torch.empty(n, dtype=dtype)
        return t[:n]


def _finite_chunk(
    af: object, bf: object, acc: _Acc, rtol: float, atol: float, scratch: _Scratch
) -> None:
    import torch

    assert isinstance(af, torch.Tensor) and isinstance(bf, torch.Tensor)
    n = af.numel()  # 1-D chunks (torch.dot above needs them), written into reused memory
    d = torch.sub(af, bf, out=scratch.get(af.dtype, 0, n)).abs_()
    max_abs = float(d.max()) if n else 0.0
    if max_abs > atol:  # otherwise every element is within atol + rtol·|b|
        tol = torch.abs(bf, out=scratch.get(d.dtype, 1, n)).mul_(rtol).add_(atol)
        outside = torch.gt(d, tol, out=scratch.get(torch.bool, 2, n))
        acc.differing += int(torch.count_nonzero(outside))
    acc.max_abs = max(acc.max_abs, max_abs)
    acc.sum_abs += float(d.sum())
    acc.finite_pairs += n
    acc.sq_diff += float(torch.dot(d, d))
    acc.dot += float(torch.dot(af, bf))


def _nonfinite_chunk(
    af: object, bf: object, acc: _Acc, rtol: float, atol: float, nan_equal: bool
) -> None:
    import torch

    assert isinstance(af, torch.Tensor) and isinstance(bf, torch.Tensor)
    na, nb = torch.isnan(af), torch.isnan(bf)
    ia, ib = torch.isinf(af), torch.isinf(bf)
    acc.nan_a += int(na.sum())
    acc.nan_b += int(nb.sum())
    acc.inf_a += int(ia.sum())
    acc.inf_b += int(ib.sum())
    both_nan = na & nb
    finite = ~(na | nb | ia | ib)
    # NaN against NaN is equal unless --nan-unequal; an Inf equals only the same Inf; anything else non-finite differs.
    nonfinite_differs = (na | nb | ia | ib) & ~finite
    same_inf = (ia & ib) & (af == bf)
    nonfinite_differs &= ~same_inf
    if nan_equal:
        nonfinite_differs &= ~both_nan
    acc.differing += int(nonfinite_differs.sum())
    a0 = torch.where(finite, af, 0.0)
    b0 = torch.where(finite, bf, 0.0)
    d = (a0 - b0).abs_()
    tol = b0.abs().mul_(rtol).add_(atol)
    acc.differing += int(((d > tol) & finite).sum())
    if d.numel():
        acc.max_abs = max(acc.max_abs, float(d.max()))
    acc.sum_abs += float(d.sum())
    acc.finite_pairs += int(finite.sum())
    acc.sq_diff += float(torch.dot(d, d))
    acc.sq_a += float(torch.dot(a0, a0))
    acc.sq_b += float(torch.dot(b0, b0))
    acc.dot += float(torch.dot(a0, b0))


Ranges = tuple[ByteRange | None, ByteRange | None]


def _ranges(
    a: Source, a_name: str, ia: TensorInfo, b: Source, b_name: str, ib: TensorInfo
) -> Ranges:
    """Where both tensors' bytes lie as is, for dtypes whose bytes diff reads itself: (None, None) elsewhere."""
    ra = a.byte_range(a_name) if ia.dtype in BYTE_DTYPES else None
    rb = b.byte_range(b_name) if ra is not None and ib.dtype in BYTE_DTYPES else None
    return ra, rb


def _chunk_pairs(
    a: Source,
    a_name: str,
    ia: TensorInfo,
    b: Source,
    b_name: str,
    ib: TensorInfo,
    options: DiffOptions,
    reader: PairReader | None,
    ranges: Ranges | None,
) -> Iterator[tuple[object, object]]:
    """Aligned chunks of both tensors: read by `reader` into reused buffers where both lie in files as is."""
    ra, rb = (None, None) if reader is None else ranges or _ranges(a, a_name, ia, b, b_name, ib)
    if reader is None or ra is None or rb is None:
        yield from zip(
            a.iter_chunks(a_name, options.chunk_elems),
            b.iter_chunks(b_name, options.chunk_elems),
            strict=True,
        )
        return
    import torch

    dtype_a, dtype_b = getattr(torch, ia.dtype), getattr(torch, ib.dtype)
    size_a, size_b = BYTE_DTYPES[ia.dtype], BYTE_DTYPES[ib.dtype]
    for pa, pb in reader.chunk_pairs(
        ra, rb, options.chunk_elems * size_a, options.chunk_elems * size_b
    ):
        yield (
            from_little_endian(pa.obj, dtype_a, len(pa) // size_a),
            from_little_endian(pb.obj, dtype_b, len(pb) // size_b),
        )


def compare_pair(
    a: Source,
    a_name: str,
    b: Source,
    b_name: str,
    name: str,
    options: DiffOptions,
    reader: PairReader | None = None,
    scratch: _Scratch | None = None,
    infos: tuple[TensorInfo, TensorInfo] | None = None,
    ranges: Ranges | None = None,
    sums: dict[str, _Acc] | None = None,
) -> TensorDiff:
    """Stream tensor a_name of `a` against b_name of `b` in aligned chunks (through `reader` when given).

    With a reader, the arithmetic runs on one torch thread until the reader is closed. `infos` and `ranges`,
    when the caller has them, are the two tensors' TensorInfos and `_ranges`, not looked up again; `sums`, when
    given, receives the pair's running sums under `name`.
    """
    if reader is not None:
        reader.single_threaded_torch()
    ia, ib = infos or (a.info(a_name), b.info(b_name))
    rtol, atol = tolerance_for(ia.dtype, ib.dtype, options)
    acc = _Acc()
    scratch = scratch or _Scratch()
    for ca, cb in _chunk_pairs(a, a_name, ia, b, b_name, ib, options, reader, ranges):
        _compare_chunk(ca, cb, acc, rtol, atol, options, scratch)
    if sums is not None:
        sums[name] = acc
    if options.exact:
        acc.differing = (
            max(acc.differing, acc.bit_differs) if ia.dtype == ib.dtype else acc.differing
        )
    numel = ia.numel
    norm_a, norm_b = math.sqrt(acc.sq_a), math.sqrt(acc.sq_b)
    rel_l2 = math.sqrt(acc.sq_diff) / norm_a if norm_a > 0 else (0.0 if acc.sq_diff == 0 else None)
    cosine = acc.dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    identical = acc.differing == 0 and acc.max_abs == 0.0 and acc.bit_differs == 0
    status = "changed" if acc.differing else ("equal" if identical else "close")
    return TensorDiff(
        name=name,
        a_name=a_name,
        b_name=b_name,
        shape=ia.shape,
        dtype_a=ia.dtype,
        dtype_b=ib.dtype,
        numel=numel,
        differing=acc.differing,
        max_abs_diff=acc.max_abs,
        mean_abs_diff=acc.sum_abs / acc.finite_pairs if acc.finite_pairs else None,
        rel_l2=rel_l2,
        cosine=cosine,
        nan_a=acc.nan_a,
        nan_b=acc.nan_b,
        inf_a=acc.inf_a,
        inf_b=acc.inf_b,
        status=status,
    )


def _severity(d: TensorDiff) -> tuple[bool, int, float, float, int]:
    """Most severe first: NaN/Inf that appeared, then floating tensors before integer ones, each by relative change.

    Integer tensors are counters and indices (BatchNorm's num_batches_tracked goes 0 → 1 on the first
    step, an infinite relative change): they rank after every weight, whatever their change. A tensor
    that was all zeros in A has changed by all of itself: relative change 1.
    """
    appeared = d.nan_b + d.inf_b > d.nan_a + d.inf_a
    integer = (
        d.dtype_a not in FLOATS and d.dtype_b not in FLOATS and d.note is None
    )  # quantized: weights
    rel = 1.0 if d.rel_l2 is None else d.rel_l2
    return (not appeared, int(integer), -rel, -(d.max_abs_diff or 0.0), -d.differing)


def _aliases(
    tensors: list[TensorInfo], present: set[str], mapping: dict[str, str]
) -> dict[str, str]:
    """{mapped name: mapped tied partner} for names whose storage another present name shares."""
    storages = [t.storage for t in tensors if t.storage is not None]
    if len(set(storages)) == len(storages):  # nothing tied: skip building a group per storage
        return {}
    back = {orig: mapped for mapped, orig in mapping.items()}
    out: dict[str, str] = {}
    for group in tied_groups(tensors):
        mapped = [back[n] for n in group if n in back]
        for name in mapped:
            partner = next((m for m in mapped if m != name and m in present), None)
            if partner is not None:
                out[name] = partner
    return out


class _Walk:
    """The pairs of one shape compared in order; `results` holds those whose bytes are not identical.

    A pair is looked up once, by the caller (`Source.infos`, `Source.byte_ranges`): here it is an index into
    those lists. Small pairs of one dtype whose equal bytes are equal values are held back, up to WINDOW
    bytes, and their bytes compared together (`PairReader.same_each`: one memcmp per run of neighbours); each
    held pair whose bytes differ, and every other pair, goes through `compare_pair`, in order.
    """

    def __init__(
        self,
        a: Source,
        b: Source,
        names: list[str],
        a_names: list[str],
        b_names: list[str],
        options: DiffOptions,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.a, self.b, self.options, self.progress = a, b, options, progress
        self.names, self.a_names, self.b_names = names, a_names, b_names
        self.infos_a, self.infos_b = a.infos(a_names), b.infos(b_names)
        self.ranges_a, self.ranges_b = a.byte_ranges(a_names), b.byte_ranges(b_names)
        self.reader, self.scratch = PairReader(), _Scratch()
        self.results: list[TensorDiff] = []
        self.held: list[int] = []  # pairs whose bytes are not compared yet
        self.bytewise_pairs = 0
        self.dequantized: Set[str] = (
            frozenset()
        )  # names whose pairs are a float and a dequantised tensor
        self.sums: dict[str, _Acc] = {}
        # Dtypes whose equal bytes are equal values (NaN bytes are not, under --nan-unequal).
        self.byte_equal = BYTE_DTYPES.keys() - (set() if options.nan_equal else NAN_DTYPES)

    def flush(self) -> None:
        """Resolve the held pairs, in order."""
        held = self.held
        if not held:
            return
        ranges_a, ranges_b = self.ranges_a, self.ranges_b
        same = self.reader.same_each([ranges_a[i] for i in held], [ranges_b[i] for i in held])  # type: ignore[misc]
        if not all(same):
            for i, identical in zip(held, same, strict=True):
                if not identical:
                    self.compare(i)
        if self.progress is not None:
            infos_a, infos_b = self.infos_a, self.infos_b
            self.progress(sum(infos_a[i].nbytes + infos_b[i].nbytes for i in held))
        held.clear()

    def compare(self, i: int) -> None:
        """Pair i through the arithmetic (after the held pairs before it)."""
        ia, ib = self.infos_a[i], self.infos_b[i]
        ra = self.ranges_a[i] if ia.dtype in BYTE_DTYPES else None
        rb = self.ranges_b[i] if ra is not None and ib.dtype in BYTE_DTYPES else None
        self.results.append(
            compare_pair(
                self.a,
                self.a_names[i],
                self.b,
                self.b_names[i],
                self.names[i],
                self.options,
                self.reader,
                self.scratch,
                infos=(ia, ib),
                ranges=(ra, rb),
                sums=self.sums if self.names[i] in self.dequantized else None,
            )
        )

    def bytewise(self, i: int) -> None:
        """Pair i of one quantized type, its bytes compared row by row: no values to compare without dequantizing."""
        ia, ra, rb = self.infos_a[i], self.ranges_a[i], self.ranges_b[i]
        assert ra is not None and rb is not None
        self.bytewise_pairs += 1
        if ra[2] == rb[2] and self.reader.same(ra, rb):
            return
        numel = ia.numel
        rows = numel // ia.shape[-1] if ia.shape and ia.shape[-1] else 1
        if ra[2] != rb[2] or not numel or ra[2] % rows:
            differ, rows = rows, rows  # no row structure to compare by: the whole tensor differs
        else:
            differ = self.reader.differing_parts(ra, rb, ra[2] // rows)
        self.results.append(
            TensorDiff(
                name=self.names[i],
                a_name=self.a_names[i],
                b_name=self.b_names[i],
                shape=ia.shape,
                dtype_a=ia.dtype,
                dtype_b=self.infos_b[i].dtype,
                numel=numel,
                differing=differ * (numel // rows),
                max_abs_diff=None,
                mean_abs_diff=None,
                rel_l2=None,
                cosine=None,
                nan_a=0,
                nan_b=0,
                inf_a=0,
                inf_b=0,
                status="changed",
                note=f"{BYTEWISE_NOTE}; {differ:,} of {rows:,} rows differ",
            )
        )

    def done(self, i: int) -> None:
        if self.progress is not None:
            self.progress(self.infos_a[i].nbytes + self.infos_b[i].nbytes)

    def close(self) -> None:
        self.reader.close()


def _walk_pairs(
    walk: _Walk, shape_mismatch: list[PairMismatch], dtype_mismatch: list[PairMismatch]
) -> list[str]:
    """Compare every pair of one shape, listing the others; the names compared, in order.

    One loop over 200k pairs, nothing called per pair but for what the pair needs.
    """
    skipped: list[int] = []
    held, reader, byte_equal, names = walk.held, walk.reader, walk.byte_equal, walk.names
    held_bytes = 0
    for i, (ia, ib, ra, rb) in enumerate(
        zip(walk.infos_a, walk.infos_b, walk.ranges_a, walk.ranges_b, strict=True)
    ):
        if ia.shape != ib.shape:
            shape_mismatch.append(PairMismatch(names[i], _shape(ia), _shape(ib)))
            skipped.append(i)
            continue
        dtype = ia.dtype
        if (
            (dtype not in dtypes.BITS or ib.dtype not in dtypes.BITS)
            and ra is not None
            and rb is not None
        ):
            # A quantized type (GGUF's Q4_K): no values to read, only bytes, and only against its own type.
            walk.flush()
            held_bytes = 0
            if dtype != ib.dtype:
                dtype_mismatch.append(PairMismatch(names[i], dtype, ib.dtype))
                skipped.append(i)
            else:
                walk.bytewise(i)
            walk.done(i)
            continue
        if dtype != ib.dtype:
            if (
                names[i] not in walk.dequantized
            ):  # a float32 dequantisation against bf16 weights: expected
                dtype_mismatch.append(PairMismatch(names[i], dtype, ib.dtype))
        elif ra is not None and rb is not None and dtype in byte_equal:
            n = ra[2]
            if n <= WINDOW and n == rb[2]:
                held.append(i)
                held_bytes += n
                if held_bytes >= WINDOW:
                    walk.flush()
                    held_bytes = 0
                continue
            walk.flush()
            held_bytes = 0
            if reader.same(ra, rb):
                walk.done(i)
                continue
        walk.flush()
        held_bytes = 0
        walk.compare(i)
        walk.done(i)
    walk.flush()
    if not skipped:
        return names
    gone = set(skipped)
    return [n for i, n in enumerate(names) if i not in gone]


def _shared_parts(
    a: Source, b: Source, common: list[str], map_a: dict[str, str], map_b: dict[str, str]
) -> dict[str, str]:
    """{name: partner} for names one side records only as sharing the partner's storage and the other side shows
    with another shape or dtype: a part of the partner there, not a copy of it, so not compared as one."""
    out: dict[str, str] = {}
    for side, mapping in ((a, map_a), (b, map_b)):
        if not side.shared_storage:
            continue
        as_mapped = {old: new for new, old in mapping.items()}
        for name in common:
            kept = side.shared_storage.get(mapping[name])
            if kept is None:
                continue
            ia, ib = a.info(map_a[name]), b.info(map_b[name])
            if ia.shape != ib.shape or ia.dtype != ib.dtype:
                out[name] = as_mapped.get(kept, kept)
    return out


def diff_sources(
    a: Source,
    b: Source,
    options: DiffOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> DiffReport:
    """What differs between two sources' state dicts; what `modinspect diff A B` reports.

    Tensors are compared one pair at a time in aligned chunks read from disk: memory stays flat, never a
    whole file.

    Args:
        a: the first Source.
        b: the second Source.
        options: tolerances, `exact`, `nan_equal`, a KeyMap for B's names (default: `DiffOptions()`, the CLI's).
        progress: called with the number of bytes done as pairs are compared.

    Returns:
        A DiffReport: names on one side only, shape and dtype mismatches, changed and close tensors (worst
        first), counts, and a roll-up per module; `differs` says whether anything differs.

    Example:
        >>> with (
        ...     modinspect.open_source("sample_models/small_cnn.pth") as a,
        ...     modinspect.open_source("sample_models/small_cnn.safetensors") as b,
        ... ):
        ...     report = modinspect.diff_sources(a, b)
        >>> report.differs, report.identical
        (False, 16)
    """
    options = options or DiffOptions()
    side: str | None = None
    schemes: dict[str, Scheme] = {}
    # A quantized checkpoint names what it adds (qweight, scales, absmax...); a GGUF file may not, nor
    # torchao's tensor subclasses (one entry per weight, under the float name).
    if options.dequantize and (
        "gguf" in (a.format, b.format)
        or a.state_dict_names() != b.state_dict_names()
        or any(t.subclass is not None for t in (*a.tensors, *b.tensors))
    ):
        a, b, side, schemes = _dequantized_sides(a, b)
    map_a = options.keymap.map_names(a.state_dict_names(), a.label)
    map_b = options.keymap.map_names(b.state_dict_names(), b.label)
    keys_a, keys_b = list(map_a), list(map_b)
    if (
        keys_a == keys_b
    ):  # the same names in the same order (two versions of one model): nothing to match
        common, only_a, only_b, aliased = keys_a, [], [], []
    else:  # the dicts answer `in` (one lookup per key: no set rebuilt per key)
        common = [n for n in keys_a if n in map_b]
        only_a = [n for n in keys_a if n not in map_b]
        only_b = [n for n in keys_b if n not in map_a]
        # A tied name one side stores once (save_pretrained, save_model) matches through its partner.
        common_set = set(common)
        alias_a = _aliases(a.tensors, common_set, map_a) if only_a else {}
        alias_b = _aliases(b.tensors, common_set, map_b) if only_b else {}
        aliased = [(n, alias_a[n]) for n in only_a if n in alias_a] + [
            (n, alias_b[n]) for n in only_b if n in alias_b
        ]
        only_a = [n for n in only_a if n not in alias_a]
        only_b = [n for n in only_b if n not in alias_b]
    if (
        a.shared_storage or b.shared_storage
    ):  # save_model's part-of-a-tensor names: matched through their partner
        parts = _shared_parts(a, b, common, map_a, map_b)
        if parts:
            common = [n for n in common if n not in parts]
            aliased = [*aliased, *parts.items()]
    shape_mismatch: list[PairMismatch] = []
    dtype_mismatch: list[PairMismatch] = []
    # 200k pairs hold 200k infos and ranges and free none: automatic collections would rescan them all.
    with paused_gc():
        a_names, b_names = (
            ([map_a[n] for n in common], [map_b[n] for n in common])
            if options.keymap.rewrites
            else (common, common)
        )
        walk = _Walk(a, b, common, a_names, b_names, options, progress)
        if schemes:
            stored = dict(zip(a_names if side == "a" else b_names, common, strict=True))
            schemes = {stored[n]: s for n, s in schemes.items() if n in stored}
            walk.dequantized = schemes.keys()
        with contextlib.closing(walk):
            compared = _walk_pairs(walk, shape_mismatch, dtype_mismatch)
    results = walk.results
    sums = walk.sums
    quant = [
        _quant_error(n, schemes[n], sums[n], walk.infos_a[i].numel, side)
        for i, n in enumerate(common)
        if n in sums
    ]
    same = len(compared) - len(results)
    changed = sorted((r for r in results if r.status == "changed"), key=_severity)
    close = [r for r in results if r.status == "close"]
    return DiffReport(
        a=a.label,
        b=b.label,
        format_a=a.format,
        format_b=b.format,
        only_in_a=tuple(only_a),
        only_in_b=tuple(only_b),
        shape_mismatch=tuple(shape_mismatch),
        dtype_mismatch=tuple(dtype_mismatch),
        changed=tuple(changed),
        close=tuple(close),
        equal=same + sum(1 for r in results if r.status != "changed"),
        identical=same + sum(1 for r in results if r.status == "equal"),
        compared=len(compared),
        aliased=tuple(aliased),
        rollup=_rollup(compared, results),
        hints=tuple(_hints(only_a, only_b, map_a.keys(), map_b.keys(), a.label, b.label)),
        tolerance=_describe_tolerance(options),
        nan_equal=options.nan_equal,
        bytewise=walk.bytewise_pairs,
        module_status=_module_status(compared, changed, only_a, only_b, shape_mismatch),
        would_call_a=tuple(a.would_call),
        would_call_b=tuple(b.would_call),
        dequantized=side,
        quantization=tuple(sorted(quant, key=_worst)),
        quant_modules=tuple(sorted(_quant_modules(quant, walk.sums, side), key=_worst)),
    )


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _rollup(compared: list[str], results: list[TensorDiff]) -> tuple[ModuleRollup, ...]:
    """Per module with a changed tensor, in the order modules first appear: its tensors compared, changed, max |Δ|."""
    changed: dict[str, list[TensorDiff]] = {}
    for r in results:
        if r.status == "changed":
            changed.setdefault(rollup_key(r.name), []).append(r)
    if not changed:
        return ()
    sizes = Counter(rollup_keys(compared))  # in first-seen order
    return tuple(
        ModuleRollup(
            module,
            size,
            len(changed[module]),
            max(
                (m.max_abs_diff for m in changed[module] if m.max_abs_diff is not None),
                default=None,
            ),
        )
        for module, size in sizes.items()
        if module in changed
    )


def _module_status(
    compared: list[str],
    changed: list[TensorDiff],
    only_a: list[str],
    only_b: list[str],
    shape_mismatch: list[PairMismatch],
) -> tuple[ModuleStatus, ...]:
    """Every module (the roll-up's key) with its verdict, in first-seen order: compared names, then A's, then B's."""
    names = [*compared, *(m.name for m in shape_mismatch), *only_a, *only_b]
    keys = rollup_keys(names)
    sizes = Counter(keys)
    moved = {rollup_key(r.name) for r in changed} | set(rollup_keys(m.name for m in shape_mismatch))
    side_a = Counter(keys[len(names) - len(only_a) - len(only_b) : len(names) - len(only_b)])
    side_b = Counter(keys[len(names) - len(only_b) :])
    out = []
    for key, size in sizes.items():
        if side_a[key] == size:
            status = "only_in_a"
        elif side_b[key] == size:
            status = "only_in_b"
        elif key in moved or side_a[key] or side_b[key]:
            status = "changed"
        else:
            status = "unchanged"
        out.append(ModuleStatus(key, status, size))
    return tuple(out)


def _hints(
    only_a: list[str],
    only_b: list[str],
    names_a: Set[str],
    names_b: Set[str],
    label_a: str,
    label_b: str,
) -> list[str]:
    hints = []
    for here, there, label, other in (
        (only_a, names_b, label_a, label_b),
        (only_b, names_a, label_b, label_a),
    ):
        found = suggest_prefix(here, there)
        if found is not None:
            prefix, hits = found
            hints.append(
                f"{hits} of {len(here)} keys only in {label} differ from {other} by the prefix '{prefix}' "
                f"({WRAPPER_PREFIXES[prefix]}): pass --strip-prefix {prefix}"
            )
    return hints


def _describe_tolerance(options: DiffOptions) -> str:
    if options.exact:
        return "exact (bitwise)"
    if options.atol is None and options.rtol is None:
        return "torch.testing defaults per dtype"
    return f"rtol={options.rtol if options.rtol is not None else 'default'}, atol={options.atol if options.atol is not None else 'default'}"


def _dequantized_sides(
    a: Source, b: Source
) -> tuple[Source, Source, str | None, dict[str, Scheme]]:
    """A and B with the one side that holds quantized tensors dequantised, when the other holds none:
    (a, b, "a" or "b" or None, {dequantised name as that side stores it: its Scheme})."""
    from modinspect.analysis.dequant import dequantized, is_quantized

    qa, qb = is_quantized(a), is_quantized(b)
    if qa == qb:
        return a, b, None, {}
    view = dequantized(a if qa else b)
    if view is None:
        return a, b, None, {}
    if qa:
        return view, b, "a", dict(view.schemes)
    return a, view, "b", dict(view.schemes)


def _errors(acc: _Acc, side: str | None) -> tuple[float | None, float | None, float | None]:
    """(relative error, cosine, SNR in dB) of a float tensor against its dequantisation, from running sums."""
    ref = acc.sq_b if side == "a" else acc.sq_a
    other = acc.sq_a if side == "a" else acc.sq_b
    rel = math.sqrt(acc.sq_diff / ref) if ref > 0 else (0.0 if acc.sq_diff == 0 else None)
    cosine = acc.dot / math.sqrt(ref * other) if ref > 0 and other > 0 else None
    snr = 10 * math.log10(ref / acc.sq_diff) if ref > 0 and acc.sq_diff > 0 else None
    return rel, cosine, snr


def _quant_error(name: str, scheme: Scheme, acc: _Acc, numel: int, side: str | None) -> QuantError:
    rel, cosine, snr = _errors(acc, side)
    return QuantError(name, scheme.scheme, scheme.bits_per_weight, numel, rel, cosine, snr)


def _quant_modules(
    quant: list[QuantError], sums: dict[str, _Acc], side: str | None
) -> list[QuantModuleError]:
    """Each module's dequantised tensors together: their squares summed, in first-seen order."""
    by_module: dict[str, list[QuantError]] = {}
    for q in quant:
        by_module.setdefault(rollup_key(q.name), []).append(q)
    out = []
    for module, members in by_module.items():
        total = _Acc()
        for q in members:
            acc = sums[q.name]
            total.sq_a += acc.sq_a
            total.sq_b += acc.sq_b
            total.sq_diff += acc.sq_diff
            total.dot += acc.dot
        numel = sum(q.numel for q in members)
        bits = sum(q.bits_per_weight * q.numel for q in members) / numel if numel else 0.0
        schemes = tuple(dict.fromkeys(q.scheme for q in members))
        out.append(QuantModuleError(module, len(members), schemes, bits, *_errors(total, side)))
    return out


def _worst(q: QuantError | QuantModuleError) -> tuple[bool, float]:
    """Worst first: by relative error, an undefined one (a zero float tensor) last."""
    return (q.rel_error is None, -(q.rel_error or 0.0))
