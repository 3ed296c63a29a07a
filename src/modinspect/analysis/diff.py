"""Compare the state dicts of two sources, one tensor pair at a time, in bounded chunks.

Memory stays flat: each pair is read as aligned 1-d chunks straight from disk (never a whole file,
never a mapping), compared at a precision that suits the dtype, and released before the next.

Where both tensors' bytes lie in files as is (safetensors, their shards), a pair of one dtype is first
compared byte for byte, at memcmp speed and without torch: identical bytes are identical values, so the
pair is equal and needs no arithmetic. Only pairs whose bytes differ (or NaNs under --nan-unequal) are
read again as tensors, into the same reused buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modinspect.analysis.byteread import PairReader
from modinspect.analysis.keymap import WRAPPER_PREFIXES, KeyMap, rollup_key, suggest_prefix
from modinspect.report import DiffReport, ModuleRollup, PairMismatch, TensorDiff
from modinspect.sources.base import Source, TensorInfo, tied_groups

if TYPE_CHECKING:
    import torch

# torch.testing.assert_close's defaults: (rtol, atol)
DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}
CHUNK = 1 << 20
FLOATS = {"float16", "bfloat16", "float32", "float64"}
# Dtypes whose bytes diff reads itself (the comparison below handles each of them).
BYTE_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "complex64": 8, "complex128": 16,
               "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}
NAN_DTYPES = {"float16", "bfloat16", "float32", "float64", "complex64", "complex128"}


@dataclass(frozen=True)
class DiffOptions:
    atol: float | None = None
    rtol: float | None = None
    exact: bool = False  # bitwise equality
    nan_equal: bool = True
    keymap: KeyMap = field(default_factory=KeyMap)
    chunk_elems: int = CHUNK


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


def _compare_chunk(a: object, b: object, acc: _Acc, rtol: float, atol: float, options: DiffOptions,
                   scratch: _Scratch) -> None:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.to(torch.complex128)).reshape(-1), torch.view_as_real(b.to(torch.complex128)).reshape(-1)
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


def _finite_chunk(af: object, bf: object, acc: _Acc, rtol: float, atol: float, scratch: _Scratch) -> None:
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


def _nonfinite_chunk(af: object, bf: object, acc: _Acc, rtol: float, atol: float, nan_equal: bool) -> None:
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


def _chunk_pairs(a: Source, a_name: str, b: Source, b_name: str, options: DiffOptions,
                 reader: PairReader | None) -> Iterator[tuple[object, object]]:
    """Aligned chunks of both tensors: read by `reader` into reused buffers where both lie in files as is."""
    ia, ib = a.info(a_name), b.info(b_name)
    ra = a.byte_range(a_name) if reader is not None and ia.dtype in BYTE_DTYPES else None
    rb = b.byte_range(b_name) if ra is not None and ib.dtype in BYTE_DTYPES else None
    if reader is None or ra is None or rb is None:
        yield from zip(a.iter_chunks(a_name, options.chunk_elems), b.iter_chunks(b_name, options.chunk_elems),
                       strict=True)
        return
    import torch

    dtype_a, dtype_b = getattr(torch, ia.dtype), getattr(torch, ib.dtype)
    size_a, size_b = BYTE_DTYPES[ia.dtype], BYTE_DTYPES[ib.dtype]
    for pa, pb in reader.chunk_pairs(ra, rb, options.chunk_elems * size_a, options.chunk_elems * size_b):
        yield (torch.frombuffer(pa.obj, dtype=dtype_a, count=len(pa) // size_a),
               torch.frombuffer(pb.obj, dtype=dtype_b, count=len(pb) // size_b))


def compare_pair(a: Source, a_name: str, b: Source, b_name: str, name: str, options: DiffOptions,
                 reader: PairReader | None = None, scratch: _Scratch | None = None) -> TensorDiff:
    """Stream tensor a_name of `a` against b_name of `b` in aligned chunks (through `reader` when given).

    With a reader, the arithmetic runs on one torch thread until the reader is closed.
    """
    if reader is not None:
        reader.single_threaded_torch()
    ia, ib = a.info(a_name), b.info(b_name)
    rtol, atol = tolerance_for(ia.dtype, ib.dtype, options)
    acc = _Acc()
    scratch = scratch or _Scratch()
    for ca, cb in _chunk_pairs(a, a_name, b, b_name, options, reader):
        _compare_chunk(ca, cb, acc, rtol, atol, options, scratch)
    if options.exact:
        acc.differing = max(acc.differing, acc.bit_differs) if ia.dtype == ib.dtype else acc.differing
    numel = ia.numel
    norm_a, norm_b = math.sqrt(acc.sq_a), math.sqrt(acc.sq_b)
    rel_l2 = math.sqrt(acc.sq_diff) / norm_a if norm_a > 0 else (0.0 if acc.sq_diff == 0 else None)
    cosine = acc.dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    identical = acc.differing == 0 and acc.max_abs == 0.0 and acc.bit_differs == 0
    status = "changed" if acc.differing else ("equal" if identical else "close")
    return TensorDiff(
        name=name, a_name=a_name, b_name=b_name, shape=ia.shape, dtype_a=ia.dtype, dtype_b=ib.dtype, numel=numel,
        differing=acc.differing, max_abs_diff=acc.max_abs,
        mean_abs_diff=acc.sum_abs / acc.finite_pairs if acc.finite_pairs else None,
        rel_l2=rel_l2, cosine=cosine, nan_a=acc.nan_a, nan_b=acc.nan_b, inf_a=acc.inf_a, inf_b=acc.inf_b,
        status=status,
    )


def _severity(d: TensorDiff) -> tuple[bool, int, float, float, int]:
    """Most severe first: NaN/Inf that appeared, then floating tensors before integer ones, each by relative change.

    Integer tensors are counters and indices (BatchNorm's num_batches_tracked goes 0 → 1 on the first
    step, an infinite relative change): they rank after every weight, whatever their change. A tensor
    that was all zeros in A has changed by all of itself: relative change 1.
    """
    appeared = d.nan_b + d.inf_b > d.nan_a + d.inf_a
    integer = d.dtype_a not in FLOATS and d.dtype_b not in FLOATS
    rel = 1.0 if d.rel_l2 is None else d.rel_l2
    return (not appeared, int(integer), -rel, -d.max_abs_diff, -d.differing)


def _aliases(tensors: list[TensorInfo], present: set[str], mapping: dict[str, str]) -> dict[str, str]:
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


def _byte_identical(a: Source, a_name: str, b: Source, b_name: str, ia: TensorInfo, options: DiffOptions,
                    reader: PairReader) -> bool:
    """A pair of one dtype whose bytes are equal: equal values, so `equal` (bar NaNs under --nan-unequal)."""
    if ia.dtype not in BYTE_DTYPES or (not options.nan_equal and ia.dtype in NAN_DTYPES):
        return False
    ra = a.byte_range(a_name)
    rb = b.byte_range(b_name) if ra is not None else None
    return ra is not None and rb is not None and reader.same(ra, rb)


def diff_sources(a: Source, b: Source, options: DiffOptions | None = None,
                 progress: Callable[[int], None] | None = None) -> DiffReport:
    """What differs between two sources' state dicts. `progress(nbytes)` is called after each pair."""
    options = options or DiffOptions()
    map_a = options.keymap.map_names(a.state_dict_names(), a.label)
    map_b = options.keymap.map_names(b.state_dict_names(), b.label)
    names_a, names_b = set(map_a), set(map_b)  # once: not rebuilt per key
    common = [n for n in map_a if n in names_b]
    only_a = [n for n in map_a if n not in names_b]
    only_b = [n for n in map_b if n not in names_a]
    # A tied name one side stores once (save_pretrained, save_model) matches through its partner.
    common_set = set(common)
    alias_a = _aliases(a.tensors, common_set, map_a)
    alias_b = _aliases(b.tensors, common_set, map_b)
    aliased = [(n, alias_a[n]) for n in only_a if n in alias_a] + [(n, alias_b[n]) for n in only_b if n in alias_b]
    only_a = [n for n in only_a if n not in alias_a]
    only_b = [n for n in only_b if n not in alias_b]
    shape_mismatch: list[PairMismatch] = []
    dtype_mismatch: list[PairMismatch] = []
    outcomes: list[tuple[str, TensorDiff | None]] = []  # None: byte-identical, equal without arithmetic
    reader = PairReader()
    scratch = _Scratch()
    try:
        for name in common:
            ia, ib = a.info(map_a[name]), b.info(map_b[name])
            if ia.shape != ib.shape:
                shape_mismatch.append(PairMismatch(name, _shape(ia), _shape(ib)))
                continue
            if ia.dtype != ib.dtype:
                dtype_mismatch.append(PairMismatch(name, ia.dtype, ib.dtype))
            elif _byte_identical(a, map_a[name], b, map_b[name], ia, options, reader):
                outcomes.append((name, None))
                if progress is not None:
                    progress(ia.nbytes + ib.nbytes)
                continue
            outcomes.append((name, compare_pair(a, map_a[name], b, map_b[name], name, options, reader,
                                                     scratch)))
            if progress is not None:
                progress(ia.nbytes + ib.nbytes)
    finally:
        reader.close()
    results = [r for _, r in outcomes if r is not None]
    same = len(outcomes) - len(results)
    changed = sorted((r for r in results if r.status == "changed"), key=_severity)
    close = [r for r in results if r.status == "close"]
    return DiffReport(
        a=a.label, b=b.label, format_a=a.format, format_b=b.format, only_in_a=tuple(only_a), only_in_b=tuple(only_b),
        shape_mismatch=tuple(shape_mismatch), dtype_mismatch=tuple(dtype_mismatch), changed=tuple(changed),
        close=tuple(close), equal=same + sum(1 for r in results if r.status != "changed"),
        identical=same + sum(1 for r in results if r.status == "equal"), compared=len(outcomes), aliased=tuple(aliased),
        rollup=_rollup(outcomes), hints=tuple(_hints(only_a, only_b, names_a, names_b, a.label, b.label)),
        tolerance=_describe_tolerance(options), nan_equal=options.nan_equal,
    )


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _rollup(outcomes: list[tuple[str, TensorDiff | None]]) -> tuple[ModuleRollup, ...]:
    groups: dict[str, list[TensorDiff | None]] = {}
    for name, r in outcomes:
        groups.setdefault(rollup_key(name), []).append(r)
    out = []
    for module, members in groups.items():
        changed = [m for m in members if m is not None and m.status == "changed"]
        if changed:
            out.append(ModuleRollup(module, len(members), len(changed), max(m.max_abs_diff for m in changed)))
    return tuple(out)


def _hints(only_a: list[str], only_b: list[str], names_a: set[str], names_b: set[str], label_a: str,
           label_b: str) -> list[str]:
    hints = []
    for here, there, label, other in ((only_a, names_b, label_a, label_b), (only_b, names_a, label_b, label_a)):
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
