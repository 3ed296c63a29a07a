"""On-device reductions: one tensor (an output, a gradient, parameters' gradients) to the values of its record.

Each function returns a chunk, `MOMENTS(field=value, ...)` (`reductions.chunk_builder`): 0-dim device tensors
and host numbers named by the record's fields, queued for the one transfer of a batch. Nothing here reads a value
back to the host (no `.item()`, no sync). Two modes:

- fast: exact when every value is finite; a NaN/Inf (or an overflow) shows in a total that is not finite
  (a mean, an M2, a sum of squares), which the host sees after the transfer and answers by replaying the
  batch in exact mode (`transfer.suspect`);
- exact: masked reductions over the finite values, with NaN and Inf counted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from modinspect.run.reductions import GradTotals, Moments, ParamGradTotals, chunk_builder

if TYPE_CHECKING:
    import torch

# Each reduction returns its record's chunk through these: values named by field, in the record's field order.
MOMENTS = chunk_builder(Moments)
GRAD = chunk_builder(GradTotals)
PARAM_GRAD = chunk_builder(ParamGradTotals)
HIST_BINS = 16
HIST_SAMPLE = 65_536
EXACT_FLOAT_COUNT = 1 << 24  # float32 counts integers exactly up to here
BLOCKED_DOT = 1 << 22  # a self-dot over more elements than this runs in blocks
DOT_BLOCK = 1 << 14


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    """Count of non-zero elements (NaN counts as non-zero)."""
    import torch

    return torch.count_nonzero(x)


def sumsq(v: torch.Tensor) -> torch.Tensor:
    """Σ v² of a 1-d tensor, as a 0-dim tensor: one BLAS dot, or blocks of DOT_BLOCK above BLOCKED_DOT elements.

    A dot's accumulators add the values one after another: over GPT-2's 26M logits an fp32 dot is off by
    ~3e-4. Above BLOCKED_DOT, blocks are dotted in one batched call (bmm) and their sums added by torch.sum,
    which adds pairwise: ~2e-8, for ~1.4x the plain dot's time on those few large tensors.
    """
    import torch

    n = v.numel()
    if n <= BLOCKED_DOT:
        return torch.dot(v, v)
    k = n // DOT_BLOCK
    head = v[: k * DOT_BLOCK].view(k, 1, DOT_BLOCK)
    total = torch.bmm(head, head.transpose(1, 2)).sum()
    tail = v[k * DOT_BLOCK :]
    return total + torch.dot(tail, tail) if tail.numel() else total


def unit_dim(ndim: int) -> int | None:
    """The feature dimension of a ReLU output: 1 for (N, C, H, W...) (4+ dims), the last for (N, F), (N, T, F)."""
    if ndim == 0:
        return None
    return 1 if ndim >= 4 else ndim - 1


class Scratch:
    """Reused temporary buffers, one per (dtype, device), grown to the largest tensor seen.

    A fresh 100 MB tensor per call (GPT-2's logits) costs more in page faults than the arithmetic itself.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, str], torch.Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        import torch

        key = (dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel]


def moments_fast(t: torch.Tensor, scratch: Scratch, nonnegative: bool = False) -> list[Any]:
    """The `Moments` chunk of `t`, exact when all values are finite (nan and inf are host zeros).

    A mean or M2 that is not finite (a NaN/Inf, or an overflow) makes the batch suspect on the host,
    which then replays it exactly. `nonnegative` (a ReLU's output): sum |x| is the sum.
    """
    import torch

    x = t.detach()
    flat = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).reshape(-1)
    numel = flat.numel()
    buf = scratch.get(numel, flat.dtype, flat.device)
    total = flat.sum()
    mean = total / numel
    centred = torch.sub(flat, mean, out=buf)  # two-pass: centred before squaring
    m2 = sumsq(centred)  # BLAS dot: one fused pass (vector_norm is several on the CPU)
    lo, hi = torch.aminmax(flat)
    # |x| = x bit for bit where x >= 0 (a ReLU's -0.0 adds the same): the same sum, two passes fewer.
    abs_sum = total if nonnegative else torch.abs(flat, out=buf).sum()
    if numel <= EXACT_FLOAT_COUNT:
        # A float 0/1 mask sums exactly below 2**24 and vectorises; count_nonzero branches per element
        # and is ~20x slower on sparse (ReLU) outputs.
        zeros = torch.eq(flat, 0, out=buf).sum()
    else:
        zeros = numel - torch.count_nonzero(flat)
    return MOMENTS(
        n=numel, mean=mean, m2=m2, lo=lo, hi=hi, abs_sum=abs_sum, zeros=zeros, nan=0, inf=0
    )


def moments_exact(t: torch.Tensor) -> list[Any]:
    """The `Moments` chunk of `t` over its finite values, in fp32 or wider, NaN and Inf counted.

    Built from cheap vectorised passes (nan_to_num, sum, bool-sum counts, amin/amax) rather than
    isfinite/masked_fill, which cost several times more on the CPU.
    """
    import torch

    x = t.detach()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    big = torch.finfo(x.dtype).max
    numel = x.numel()
    nonzero = _nonzero(x)
    xf = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    k = nonzero - _nonzero(xf)  # non-finite values are non-zero in x and zero in xf
    nan = nonzero - _nonzero(torch.nan_to_num(x, nan=0.0, posinf=math.inf, neginf=-math.inf))
    n = numel - k
    mean = xf.sum() / n
    # Each non-finite slot of xf is 0 and adds mean² to the centred sum: take it back out.
    m2 = (xf - mean).square().sum() - k * mean * mean
    lo = torch.nan_to_num(x, nan=big, posinf=big, neginf=big).amin()
    hi = torch.nan_to_num(x, nan=-big, posinf=-big, neginf=-big).amax()
    abs_sum = xf.abs().sum()
    zeros = numel - nonzero
    return MOMENTS(
        n=n,
        mean=mean,
        m2=m2,
        lo=lo,
        hi=hi,
        abs_sum=abs_sum,
        zeros=zeros,
        nan=nan,
        inf=k - nan,
    )


def grad_totals(grad: torch.Tensor, exact: bool) -> list[Any]:
    """The `GradTotals` chunk of one output gradient (fast: a sum of squares that is not finite is suspect)."""
    import torch

    g = grad.detach()
    # A half-precision gradient can overflow long before fp32 would: keep max|∇| over the dtype's limit.
    near: Any = 0.0
    if g.dtype in (torch.float16, torch.bfloat16):
        near = (
            torch.nan_to_num(g.abs(), nan=0.0, posinf=0.0).amax().float() / torch.finfo(g.dtype).max
        )
        g = g.float()
    if not exact:
        return GRAD(squares=sumsq(g.reshape(-1)), nan=0, inf=0, seen=1, near=near)
    nonzero = _nonzero(g)
    gf = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    k = nonzero - _nonzero(gf)
    nan = nonzero - _nonzero(torch.nan_to_num(g, nan=0.0, posinf=math.inf, neginf=-math.inf))
    squares = gf.square().sum()
    return GRAD(squares=squares, nan=nan, inf=k - nan, seen=1, near=near)


def param_grad_totals(grads: list[torch.Tensor], exact: bool) -> list[Any]:
    """The `ParamGradTotals` chunk of one module's own parameters' gradients."""
    import torch

    parts = [
        g.detach().float() if g.dtype in (torch.float16, torch.bfloat16) else g.detach()
        for g in grads
    ]
    if not exact:
        squares = torch.stack([sumsq(g.reshape(-1)) for g in parts]).sum()
        return PARAM_GRAD(squares=squares, nan=0, inf=0, seen=1)
    squares = torch.stack(
        [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).square().sum() for g in parts]
    ).sum()
    nan = torch.stack([torch.isnan(g).sum() for g in parts]).sum()
    inf = torch.stack([torch.isinf(g).sum() for g in parts]).sum()
    return PARAM_GRAD(squares=squares, nan=nan, inf=inf, seen=1)


def nonfinite(t: torch.Tensor, exact: bool) -> torch.Tensor:
    """A 0-dim device bool: does `t` hold NaN/Inf? (fast: or does its sum overflow, a false alarm -> replay)."""
    import torch

    if exact:
        # x * 0 is 0 where x is finite and NaN elsewhere: exact, and cheaper than isfinite().all().
        return torch.isnan((t.detach() * 0).sum())
    return ~torch.isfinite(t.detach().sum())


def units_alive(out: torch.Tensor) -> torch.Tensor | None:
    """Per unit of a ReLU-family output, whether any of its values is non-zero (a device bool vector)."""
    dim = unit_dim(out.ndim)
    if dim is None:
        return None
    other = [d for d in range(out.ndim) if d != dim]
    # ReLU outputs are >= 0 (or NaN): a unit is alive iff its sum is non-zero, and a sum over
    # dimensions vectorises where any(x != 0) does not (~40x faster on the CPU).
    return out.detach().sum(dim=other) != 0 if other else out.detach() != 0


def histogram(t: torch.Tensor, lo: Any, hi: Any, sample: float | None, exact: bool) -> torch.Tensor:
    """Counts over [lo, hi] in HIST_BINS bins of up to HIST_SAMPLE evenly spaced values, on the device.

    A sparkline needs the shape of the distribution, not every value: sampling keeps the cost flat
    however large the activation (GPT-2's logits hold 26 million values). `sample`: this fraction of
    the values instead (watch's sample=). `lo`, `hi`: the call's min and max (device scalars).
    """
    import torch

    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // HIST_SAMPLE) if sample is None else max(1, round(1 / sample))
    x = flat[::step].float()
    lo, hi = torch.as_tensor(lo).to(x.dtype), torch.as_tensor(hi).to(x.dtype)
    scale = HIST_BINS / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
    scaled = (x - lo).mul_(scale)  # in place: one temporary fewer, the same values
    if exact:  # non-finite values go to an extra bin that is dropped
        scaled = torch.nan_to_num(scaled, nan=-1.0, posinf=-1.0, neginf=-1.0)
        scaled.masked_fill_(scaled < 0, HIST_BINS + 1.0)
    # The maximum lands in the last bin: clamping to it is the same as moving bin HIST_BINS down, one op fewer.
    cpu = x.device.type == "cpu"
    idx = (scaled.to(torch.int32) if cpu else scaled.long()).clamp_(0, HIST_BINS - 1)
    if exact:
        idx.masked_fill_(scaled > HIST_BINS, HIST_BINS)
    if (
        cpu
    ):  # int32 and bincount: a quarter faster; on a GPU bincount reads its maximum back (a sync)
        return torch.bincount(idx, minlength=HIST_BINS + 1)[:HIST_BINS]
    hist = torch.zeros(HIST_BINS + 1, dtype=torch.long, device=x.device)
    hist.scatter_add_(0, idx, torch.ones(1, dtype=torch.long, device=x.device).expand_as(idx))
    return hist[:HIST_BINS]
