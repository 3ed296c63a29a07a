"""The hook machinery behind `stats`: per-call device reductions queued for one transfer per batch.

Every hook call reduces its tensor to a few device scalars (no `.item()`, no host sync) and
queues them; at the end of a batch they are stacked, copied to the host in one transfer, and
merged exactly there (Chan's parallel merge of count, mean and M2).

Gradients are captured with tensor hooks on module outputs, not `register_full_backward_hook`,
which breaks on in-place modules. Each tensor gets one hook however many modules return it.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modinspect.reports import ModuleStats, NonfiniteOrigin
from modinspect.run.reductions import NEAR_LIMIT, GradTotals, Running, flags_for, grad_outliers
from modinspect.tensors import iter_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.run.attribution import OpTracer

RELU_FAMILY = ("ReLU", "ReLU6")
HIST_BINS = 16
HIST_SAMPLE = 65_536
EXACT_FLOAT_COUNT = 1 << 24  # float32 counts integers exactly up to here
Batch = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class StatsOptions:
    """How `collect_stats` runs the model and what it records; the CLI's defaults.

    Attributes:
        backward: run a backward too, for the gradient statistics.
        pattern: hook only the modules whose name matches this glob (None: every module).
        loss: what the backward starts from: "auto" (the model's own `loss` output if any, else "sum"),
            "sum", "mean", or a function of the output.
        autocast_dtype: "bfloat16" or "float16" to run under torch.autocast; None: the model's own dtypes.
        train: run in training mode (dropout, batch statistics); False: eval mode.
        histogram: keep a histogram of each module's output over [min, max] of its first call.
        exact: always use the masked reductions (normally only for a batch with a NaN/Inf).
    """

    backward: bool = True
    pattern: str | None = None
    loss: str | Callable[[Any], Any] = (
        "auto"  # auto: the model's own `loss` output if any, else sum
    )
    autocast_dtype: str | None = None  # "bfloat16" | "float16" | None
    train: bool = False
    histogram: bool = True
    exact: bool = False  # always use the masked reductions (normally only for batches with NaN/Inf)


def floating(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [t for t in tensors if t.is_floating_point() and t.numel() > 0]


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    """Count of non-zero elements (NaN counts as non-zero)."""
    import torch

    return torch.count_nonzero(x)


BLOCKED_DOT = 1 << 22  # a self-dot over more elements than this runs in blocks
DOT_BLOCK = 1 << 14


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


def to_host(data: torch.Tensor | None) -> list[float]:
    """The one device->host copy of a packed batch (or of a `watch` window): everything else stays on the device."""
    return data.cpu().tolist() if data is not None else []


@dataclass
class Packed:
    """One batch's queued values as one device vector, and how to take them apart again."""

    data: torch.Tensor | None
    layout: list[tuple[str, int, list[tuple[str, float]]]]
    order: list[int]  # scalar indices in the order they sit in `data`
    sizes: list[int]  # lengths of the vectors after the scalars
    scalars: int
    calls: list[_Call]
    tensors: list[_TensorRec]
    exact: bool


@dataclass
class _Call:
    module: int
    in_bad: torch.Tensor | None = None


@dataclass
class _TensorRec:
    producers: list[tuple[int, bool]] = field(
        default_factory=list
    )  # (call index, is primary output)
    consumers: list[int] = field(default_factory=list)


class Collector:
    """Hook state for one run. Host-side totals live in `running`, device-side pieces in `pieces`."""

    def __init__(
        self, names: list[str], modules: list[Any], options: StatsOptions, acc_dtype: torch.dtype
    ) -> None:
        import torch

        self.names = names
        self.modules = modules
        self.options = options
        self.acc = acc_dtype
        self.index = {id(m): i for i, m in enumerate(modules)}
        self.running = [Running() for _ in modules]
        self.alive: list[torch.Tensor | None] = [None] * len(modules)
        self.units_ok = [True] * len(modules)
        self.histograms: list[tuple[int, ...]] = [() for _ in modules]
        self.hist_range: list[tuple[float, float] | None] = [
            None for _ in modules
        ]  # [min, max] the bins span
        self.input_from: dict[
            int, int
        ] = {}  # module -> the module whose output was its first input
        # sumsq, nan, inf, and whether any gradient reached the output at all: an output that does not
        # depend on the parameters or the input (rotary cos/sin tables), or sits behind a non-differentiable
        # op, has no gradient norm, not a norm of 0.
        self.grad = [GradTotals() for _ in modules]
        self.param_grad = [[0.0, 0, 0, False] for _ in modules]
        self.origin: NonfiniteOrigin | None = None
        self.wants_grad: set[int] = set()  # modules whose first output required grad
        self.first_call: dict[
            int, int
        ] = {}  # module -> order of its first call, for execution order
        self.batch_index = 0
        # Fast mode computes statistics that are exact when every value is finite; a mean, M2 or sum of
        # squares that is not finite (read on the host) flags the batch, which is replayed in exact (masked) mode.
        self.exact = False
        self._nonnegative = (
            torch.nn.ReLU,
            torch.nn.ReLU6,
        )  # outputs >= 0 (or NaN): sum |x| is their sum
        self.tensor_hooks: list[Any] = []
        self.in_hook = 0
        self.tracer: OpTracer | None = None  # set during the replay of a flagged batch
        self._scratch_buffers: dict[tuple[torch.dtype, str], torch.Tensor] = {}
        self.sample: float | None = (
            None  # histogram: this fraction of the elements (watch's sample=), else HIST_SAMPLE
        )
        self._reset_batch()

    def remove_tensor_hooks(self) -> None:
        for handle in self.tensor_hooks:
            handle.remove()
        self.tensor_hooks = []

    # ---------------------------------------------------------------- per batch
    def _reset_batch(self) -> None:
        # Values waiting for the end-of-batch transfer: 0-dim device scalars, 1-d device vectors, and
        # numbers already on the host. Hooks only append; nothing is stacked or converted per call.
        self.scalars: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.layout: list[tuple[str, int, list[tuple[str, float]]]] = []
        self.calls: list[_Call] = []
        self.tensors: list[_TensorRec] = []
        # Keyed by object and version: an in-place module (ReLU(inplace=True)) returns its input object
        # with a bumped version, and the gradient of the new value is not the gradient of the old one.
        self.tensor_ids: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}
        self.finite_cache: dict[int, tuple[weakref.ref[Any], int, torch.Tensor | int]] = {}
        self.reduce_cache: dict[int, tuple[weakref.ref[Any], int, list[Any]]] = {}
        self.hist_pending: set[int] = set()  # modules whose histogram this batch already queued
        self.hist_cache: dict[
            int, tuple[list[Any], torch.Tensor]
        ] = {}  # id(reduced values) -> (values, counts)
        self.producer_of: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}
        self.loss_bad: torch.Tensor | None = None

    def _push(self, kind: str, index: int, values: Sequence[Any]) -> None:
        """Queue `values` (0-dim tensors, 1-d tensors or host numbers) for the transfer, in order."""
        import torch

        slots: list[tuple[str, float]] = []
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

    def pack(self) -> Packed:
        """The queued values of this batch stacked into one device vector, with what is needed to merge them later.

        No transfer: `stats` copies it at once (end_batch), `watch` keeps a window of them and copies them together.
        """
        import torch

        for m, a in enumerate(self.alive):
            if a is not None:
                self._push("alive", m, [a])
        groups: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(self.scalars):
            groups.setdefault(t.dtype, []).append(i)
        parts = [
            torch.stack([self.scalars[i] for i in idx]).to(self.acc) for idx in groups.values()
        ]
        parts += [v.to(self.acc) for v in self.vectors]
        data = torch.cat(parts) if parts else None
        order = [i for idx in groups.values() for i in idx]
        return Packed(
            data,
            self.layout,
            order,
            [v.numel() for v in self.vectors],
            len(self.scalars),
            self.calls,
            self.tensors,
            self.exact,
        )

    @staticmethod
    def unpack(packed: Packed, flat: Sequence[float]) -> list[tuple[str, int, list[float]]]:
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
        chunks: list[tuple[str, int, list[float]]] = []
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

    def nonfinite_flag(self) -> torch.Tensor | None:
        """A 0-dim device bool: did anything queued so far hold NaN/Inf (or, in fast mode, look like it)?

        Built from the flags, counts and totals already queued: no reduction runs again. None when nothing can be bad.
        """
        import torch

        flags: list[torch.Tensor] = []  # > 0 means bad
        totals: list[
            torch.Tensor
        ] = []  # non-finite means bad (fast mode: a NaN/Inf or an overflow)
        for kind, _, slots in self.layout:
            for i, check in self._checks(kind, self.exact):
                where, ref = slots[i]
                if where != "s":
                    if (ref > 0) if check == "flag" else not math.isfinite(ref):
                        return torch.ones((), dtype=torch.bool)
                    continue
                (flags if check == "flag" else totals).append(self.scalars[int(ref)])
        parts = []
        if flags:
            parts.append((torch.stack([f.to(self.acc) for f in flags]) > 0).any())
        if totals:
            parts.append(~torch.isfinite(torch.stack([t.to(self.acc) for t in totals])).all())
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] | parts[1]

    @staticmethod
    def _checks(kind: str, exact: bool) -> tuple[tuple[int, str], ...]:
        """Which values of a chunk say it may hold NaN/Inf: flags or counts (> 0), or totals (not finite).

        Fast mode queues no flags of its own: a mean, M2 or sum of squares that is not finite says it all,
        and the host reads that from the values it receives anyway (no isfinite op per call on the device).
        """
        if kind == "call":
            return ((0, "flag"), (1, "flag"))
        if kind == "loss":
            return ((0, "flag"),)
        if kind == "stats":
            return ((7, "flag"), (8, "flag")) if exact else ((1, "total"), (2, "total"))
        if kind in ("grad", "pgrad"):
            return ((1, "flag"), (2, "flag")) if exact else ((0, "total"),)
        return ()

    # ---------------------------------------------------------------- device reductions
    def _nonfinite(self, t: torch.Tensor) -> torch.Tensor | int:
        """A 0-dim device bool: does `t` hold NaN/Inf? Reuses the answer for an unchanged tensor.

        An int 0 where `t` is a fast-mode output of a hooked module: its own mean and M2 say it (`_checks`).
        """
        import torch

        hit = self.finite_cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        if self.exact:
            # x * 0 is 0 where x is finite and NaN elsewhere: exact, and cheaper than isfinite().all().
            flag = torch.isnan((t.detach() * 0).sum())
        else:
            # A NaN/Inf makes the sum non-finite; an overflowing sum only raises a false alarm (-> replay).
            flag = ~torch.isfinite(t.detach().sum())
        self.finite_cache[id(t)] = (weakref.ref(t), t._version, flag)
        return flag

    def _reduce_fast(self, t: torch.Tensor, nonnegative: bool = False) -> list[Any]:
        """[count, mean, M2, min, max, sum |x|, zeros, 0, 0]: exact when all values are finite.

        A mean or M2 that is not finite (a NaN/Inf, or an overflow) makes the batch suspect on the host
        (`_suspect`), which then replays it exactly. `nonnegative` (a ReLU's output): sum |x| is the sum.
        """
        import torch

        x = t.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        flat = x.reshape(-1)
        numel = flat.numel()
        # Temporaries go to a reused scratch buffer: a fresh 100 MB tensor per call (GPT-2's logits) costs
        # more in page faults than the arithmetic itself.
        scratch = self._scratch(numel, flat.dtype, flat.device)
        total = flat.sum()
        mean = total / numel
        centred = torch.sub(flat, mean, out=scratch)  # two-pass: centred before squaring
        m2 = sumsq(centred)  # BLAS dot: one fused pass (vector_norm is several on the CPU)
        lo, hi = torch.aminmax(flat)
        # |x| = x bit for bit where x >= 0 (a ReLU's -0.0 adds the same): the same sum, two passes fewer.
        abs_sum = total if nonnegative else torch.abs(flat, out=scratch).sum()
        if numel <= EXACT_FLOAT_COUNT:
            # A float 0/1 mask sums exactly below 2**24 and vectorises; count_nonzero branches per element
            # and is ~20x slower on sparse (ReLU) outputs.
            zeros = torch.eq(flat, 0, out=scratch).sum()
        else:
            zeros = numel - torch.count_nonzero(flat)
        return [numel, mean, m2, lo, hi, abs_sum, zeros, 0, 0]

    def _scratch(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        import torch

        key = (dtype, str(device))
        buf = self._scratch_buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._scratch_buffers[key] = buf
        return buf[:numel]

    def _reduce(self, t: torch.Tensor) -> list[Any]:
        """[finite count, mean, M2, min, max, sum |x|, zeros, nan, inf] over finite values, in fp32 or wider.

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
        return [n, mean, m2, lo, hi, abs_sum, zeros, nan, k - nan]

    def _histogram(self, t: torch.Tensor, values: list[Any]) -> torch.Tensor:
        """Counts over [min, max] in HIST_BINS bins of up to HIST_SAMPLE evenly spaced values, on the device.

        A sparkline needs the shape of the distribution, not every value: sampling keeps the cost flat
        however large the activation (GPT-2's logits hold 26 million values).
        """
        import torch

        flat = t.detach().reshape(-1)
        step = (
            max(1, flat.numel() // HIST_SAMPLE)
            if self.sample is None
            else max(1, round(1 / self.sample))
        )
        x = flat[::step].float()
        lo, hi = torch.as_tensor(values[3]).to(x.dtype), torch.as_tensor(values[4]).to(x.dtype)
        scale = HIST_BINS / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
        scaled = (x - lo).mul_(scale)  # in place: one temporary fewer, the same values
        if self.exact:  # non-finite values go to an extra bin that is dropped
            scaled = torch.nan_to_num(scaled, nan=-1.0, posinf=-1.0, neginf=-1.0)
            scaled.masked_fill_(scaled < 0, HIST_BINS + 1.0)
        # The maximum lands in the last bin: clamping to it is the same as moving bin HIST_BINS down, one op fewer.
        cpu = x.device.type == "cpu"
        idx = (scaled.to(torch.int32) if cpu else scaled.long()).clamp_(0, HIST_BINS - 1)
        if self.exact:
            idx.masked_fill_(scaled > HIST_BINS, HIST_BINS)
        if cpu:  # int32 and bincount: a quarter faster; on a GPU bincount reads its maximum back (a sync)
            return torch.bincount(idx, minlength=HIST_BINS + 1)[:HIST_BINS]
        hist = torch.zeros(HIST_BINS + 1, dtype=torch.long, device=x.device)
        hist.scatter_add_(0, idx, torch.ones(1, dtype=torch.long, device=x.device).expand_as(idx))
        return hist[:HIST_BINS]

    # ---------------------------------------------------------------- hooks
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.in_hook += 1  # the op tracer of a replay ignores our own reductions
        try:
            self._pre_hook(module, args, kwargs)
        finally:
            self.in_hook -= 1

    def forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.in_hook += 1
        try:
            self._forward_hook(module, args, kwargs, output)
        finally:
            self.in_hook -= 1

    def current_module(self) -> int | None:
        """The innermost hooked module whose forward is running."""
        open_calls = getattr(self, "_open_calls", None)
        return self.calls[open_calls[-1]].module if open_calls else None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        call_index = len(self.calls)
        call = _Call(self.index[id(module)])
        self.first_call.setdefault(call.module, len(self.first_call))
        inputs = floating(iter_tensors((args, kwargs)))
        if inputs:
            if call.module not in self.input_from:
                hit = self.producer_of.get((id(inputs[0]), inputs[0]._version))
                if hit is not None and hit[0]() is inputs[0]:
                    self.input_from[call.module] = hit[1]
            # Host zeros: fast-mode outputs of hooked modules, whose own values make a NaN/Inf suspect.
            flags = [f for f in (self._nonfinite(t) for t in inputs) if isinstance(f, torch.Tensor)]
            if flags:
                call.in_bad = flags[0] if len(flags) == 1 else torch.stack(flags).any()
        self.calls.append(call)
        if self.options.backward and torch.is_grad_enabled():
            for t in inputs:
                if t.requires_grad:
                    self._tensor(t).consumers.append(call_index)
        # Forward hooks fire in completion order; the call index links pre and post.
        self._open_calls.append(call_index)

    def _forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        import torch

        call_index = self._open_calls.pop()
        if self.tracer is not None:
            self.tracer.note_output(output, self.calls[call_index].module)
        call = self.calls[call_index]
        m = call.module
        outputs = floating(iter_tensors(output))
        in_bad: Any = call.in_bad if call.in_bad is not None else 0
        if not outputs:
            self._push("call", m, [in_bad, 0])
            return
        # The innermost module that returned this tensor (forward hooks fire innermost first).
        key = (id(outputs[0]), outputs[0]._version)
        known = self.producer_of.get(key)
        if known is None or known[0]() is not outputs[0]:  # a freed tensor's id can come back
            self.producer_of[key] = (weakref.ref(outputs[0]), m)
        values = self._reduced(outputs[0], isinstance(self.modules[m], self._nonnegative))
        # Fast mode: a NaN/Inf in the first output shows in its own mean or M2, checked on the host.
        out_bad: Any = (values[7] + values[8]) > 0 if self.exact else 0
        for other in outputs[1:]:
            bad = self._nonfinite(other)
            out_bad = bad if isinstance(out_bad, int) else out_bad | bad
        self.finite_cache[id(outputs[0])] = (weakref.ref(outputs[0]), outputs[0]._version, out_bad)
        self._push("call", m, [in_bad, out_bad])
        self._push("stats", m, values)
        if (
            self.options.histogram
            and self.batch_index == 0
            and not self.histograms[m]
            and m not in self.hist_pending
        ):
            self.hist_pending.add(m)
            # A parent returning its child's output: the child's counts (the values list is the cached one).
            hist = self.hist_cache.get(id(values))
            if hist is None or hist[0] is not values:
                hist = (values, self._histogram(outputs[0], values))
                self.hist_cache[id(values)] = hist
            self._push("hist", m, [values[3], values[4], hist[1]])
        if type(self.modules[m]).__name__ in RELU_FAMILY:
            self._track_units(m, outputs[0])
        if self.options.backward and torch.is_grad_enabled():
            for i, t in enumerate(outputs):
                if t.requires_grad:
                    self._tensor(t).producers.append((call_index, i == 0))
                    if i == 0:
                        self.wants_grad.add(m)

    def _reduced(self, t: torch.Tensor, nonnegative: bool = False) -> list[Any]:
        """_reduce, once per tensor and version: a parent returning its child's output costs nothing more."""
        hit = self.reduce_cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        values = self._reduce(t) if self.exact else self._reduce_fast(t, nonnegative)
        self.reduce_cache[id(t)] = (weakref.ref(t), t._version, values)
        return values

    def _track_units(self, m: int, out: torch.Tensor) -> None:
        dim = unit_dim(out.ndim)
        if dim is None or not self.units_ok[m]:
            return
        other = [d for d in range(out.ndim) if d != dim]
        # ReLU outputs are >= 0 (or NaN): a unit is alive iff its sum is non-zero, and a sum over
        # dimensions vectorises where any(x != 0) does not (~40x faster on the CPU).
        alive = out.detach().sum(dim=other) != 0 if other else out.detach() != 0
        prev = self.alive[m]
        if prev is None:
            self.alive[m] = alive
        elif prev.shape != alive.shape:
            self.units_ok[m] = False  # the unit count changed between calls: no per-unit answer
        else:
            self.alive[m] = prev | alive

    def _tensor(self, t: torch.Tensor) -> _TensorRec:
        """The record of `t` at its current version, registering its gradient hook the first time it is seen.

        A hook registered before an in-place op receives the gradient of the value before it, one
        registered after receives the new value's: each version gets its own record and hook.
        """
        key = (id(t), t._version)
        hit = self.tensor_ids.get(key)
        if hit is not None and hit[0]() is t:
            return self.tensors[hit[1]]
        index = len(self.tensors)
        self.tensors.append(_TensorRec())
        self.tensor_ids[key] = (weakref.ref(t), index)
        # Hooks on parameters (a leaf used as an activation) would outlive the run: keep every handle.
        self.tensor_hooks.append(t.register_hook(self._grad_hook(index)))  # type: ignore[no-untyped-call]
        return self.tensors[index]

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor | None) -> None:
            self.in_hook += 1
            try:
                record(grad)
            finally:
                self.in_hook -= 1

        def record(grad: torch.Tensor | None) -> None:
            import torch

            if (
                grad is None
            ):  # autograd passes None where a non-differentiable op (a quantized Linear) cut the graph
                return
            g = grad.detach()
            # A half-precision gradient can overflow long before fp32 would: keep max|∇| over the dtype's limit.
            near: Any = 0.0
            if g.dtype in (torch.float16, torch.bfloat16):
                near = (
                    torch.nan_to_num(g.abs(), nan=0.0, posinf=0.0).amax().float()
                    / torch.finfo(g.dtype).max
                )
                g = g.float()
            if not self.exact:
                flat = g.reshape(-1)
                self._push(
                    "grad", index, [sumsq(flat), 0, 0, near]
                )  # not finite: suspect (_checks)
                return
            nonzero = _nonzero(g)
            gf = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            k = nonzero - _nonzero(gf)
            nan = nonzero - _nonzero(
                torch.nan_to_num(g, nan=0.0, posinf=math.inf, neginf=-math.inf)
            )
            inf = k - nan
            squares = gf.square().sum()
            self._push("grad", index, [squares, nan, inf, near])

        return hook

    # ---------------------------------------------------------------- batch boundaries
    def begin_batch(self) -> None:
        self._reset_batch()
        self._open_calls: list[int] = []

    def record_loss(self, loss: torch.Tensor) -> None:
        import torch

        self._push("loss", 0, [(~torch.isfinite(loss.detach())).any()])

    def record_param_grads(self) -> None:
        import torch

        for m, module in enumerate(self.modules):
            grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
            if not grads:
                continue
            parts = [
                g.detach().float() if g.dtype in (torch.float16, torch.bfloat16) else g.detach()
                for g in grads
            ]
            if not self.exact:
                squares = torch.stack([sumsq(g.reshape(-1)) for g in parts]).sum()
                self._push("pgrad", m, [squares, 0, 0])  # not finite: suspect (_checks)
                continue
            squares = torch.stack(
                [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).square().sum() for g in parts]
            ).sum()
            nan = torch.stack([torch.isnan(g).sum() for g in parts]).sum()
            inf = torch.stack([torch.isinf(g).sum() for g in parts]).sum()
            self._push("pgrad", m, [squares, nan, inf])

    def end_batch(self) -> bool:
        """The one device->host transfer of the batch, then exact merges on the host.

        Returns False, merging nothing, when a fast-mode batch raised a suspect flag: the caller then
        replays the batch in exact mode.
        """
        packed = self.pack()
        return self.merge(packed, self.unpack(packed, to_host(packed.data)))

    def merge(self, packed: Packed, chunks: list[tuple[str, int, list[float]]]) -> bool:
        """Merge one batch's chunks into the running totals; False (nothing merged) for a suspect fast batch."""
        if not packed.exact and any(self._suspect(kind, chunk) for kind, _, chunk in chunks):
            return False
        self.calls, self.tensors = packed.calls, packed.tensors
        forward_events: list[tuple[int, bool, bool]] = []
        grad_events: list[tuple[int, float, int, int, float]] = []
        loss_bad = False
        for kind, index, chunk in chunks:
            if kind == "call":
                forward_events.append((index, chunk[0] > 0, chunk[1] > 0))
                self.running[index].calls += 1
            elif kind == "stats":
                self.running[index].merge_call(chunk)
            elif kind == "hist":
                self.hist_range[index] = (chunk[0], chunk[1])
                self.histograms[index] = tuple(int(c) for c in chunk[2:])
            elif kind == "grad":
                grad_events.append((index, chunk[0], int(chunk[1]), int(chunk[2]), chunk[3]))
            elif kind == "pgrad":
                acc = self.param_grad[index]
                acc[0] += chunk[0]
                acc[1] += int(chunk[1])
                acc[2] += int(chunk[2])
                acc[3] = True
            elif kind == "loss":
                loss_bad = chunk[0] > 0
            elif kind == "alive":
                self.running[index].set_alive(chunk)
        self._attribute_grads(grad_events)
        if self.origin is None:
            self.origin = self._forward_origin(forward_events) or self._backward_origin(
                grad_events, loss_bad
            )
        self.batch_index += 1
        return True

    @classmethod
    def _suspect(cls, kind: str, chunk: list[float]) -> bool:
        """Whether a fast-mode chunk may hold NaN/Inf (then the batch is replayed exactly)."""
        return any(
            (chunk[i] > 0) if check == "flag" else not math.isfinite(chunk[i])
            for i, check in cls._checks(kind, False)
        )

    def _attribute_grads(self, grad_events: list[tuple[int, float, int, int, float]]) -> None:
        for index, squares, nan, inf, near in grad_events:
            for call_index, primary in self.tensors[index].producers:
                m = self.calls[call_index].module
                # Only the primary output's gradient counts toward the norm; NaN/Inf of any output count.
                self.grad[m].merge(
                    GradTotals(squares, nan, inf, True, near)
                    if primary
                    else GradTotals(0.0, nan, inf)
                )

    # ---------------------------------------------------------------- where the first NaN/Inf came from
    def _forward_origin(self, events: list[tuple[int, bool, bool]]) -> NonfiniteOrigin | None:
        first_bad = next((i for i, (_, _, out_bad) in enumerate(events) if out_bad), None)
        if first_bad is None:
            return None
        producer = next(
            (i for i, (_, in_bad, out_bad) in enumerate(events) if out_bad and not in_bad), None
        )
        if producer is None:
            passed = self._unique(m for m, _, out_bad in events if out_bad)
            return NonfiniteOrigin(None, None, "forward", "input", passed)
        m = events[producer][0]
        passed = self._unique(e[0] for e in events[producer + 1 :] if e[2] and e[0] != m)
        return NonfiniteOrigin(self.names[m], self._type(m), "forward", "produced", passed)

    def _backward_origin(
        self, events: list[tuple[int, float, int, int, float]], loss_bad: bool
    ) -> NonfiniteOrigin | None:
        if loss_bad:
            return NonfiniteOrigin(None, None, "backward", "loss", ())
        first = next((i for i, e in enumerate(events) if e[2] or e[3]), None)
        if first is None:
            bad = [m for m, acc in enumerate(self.param_grad) if acc[1] or acc[2]]
            if not bad:
                return None
            return NonfiniteOrigin(
                self.names[bad[0]], self._type(bad[0]), "backward", "produced", ()
            )
        rec = self.tensors[events[first][0]]
        bad_before = {
            self.calls[c].module
            for e in events[:first]
            if e[2] or e[3]
            for c, _ in self.tensors[e[0]].producers
        }
        candidates = [c for c in rec.consumers if self.calls[c].module not in bad_before]
        passed_mods = [
            self.calls[c].module
            for e in events[first:]
            if e[2] or e[3]
            for c, _ in self.tensors[e[0]].producers
        ]
        if candidates:
            m = max(candidates, key=lambda c: (self.names[self.calls[c].module].count("."), c))
            m = self.calls[m].module
        elif rec.producers:
            # Produced by an unhooked (functional) op: blame the module whose forward ran it.
            inner = self.names[self.calls[rec.producers[0][0]].module]
            parent = inner.rpartition(".")[0] if "." in inner else ""
            m = (
                self.names.index(parent)
                if parent in self.names
                else self.calls[rec.producers[0][0]].module
            )
        else:
            return NonfiniteOrigin(None, None, "backward", "loss", self._unique(passed_mods))
        return NonfiniteOrigin(
            self.names[m],
            self._type(m),
            "backward",
            "produced",
            self._unique(x for x in passed_mods if x != m),
        )

    def _edges(self, m: int) -> tuple[float, ...]:
        """The HIST_BINS + 1 bin edges: equal widths over the [min, max] of the call the histogram sampled."""
        span = self.hist_range[m]
        if span is None or not self.histograms[m]:
            return ()
        lo, hi = span
        return tuple(lo + (hi - lo) * i / HIST_BINS for i in range(HIST_BINS + 1))

    def without_gradient(self) -> list[str]:
        """Modules whose output required grad but never received one (cut off by a non-differentiable op)."""
        return [
            f"{self.names[m] or '(model)'} ({self._type(m)})"
            for m in sorted(self.wants_grad)
            if not self.grad[m].seen
        ]

    def _type(self, m: int) -> str:
        from modinspect.run.wrappers import type_name

        return type_name(self.modules[m])

    def _unique(self, modules: Iterable[int]) -> tuple[str, ...]:
        return tuple(self.names[m] for m in dict.fromkeys(modules))

    # ---------------------------------------------------------------- report
    def module_stats(self) -> list[ModuleStats]:
        grad_norms = [
            math.sqrt(g.squares) if self.options.backward and g.seen else None for g in self.grad
        ]
        exploding, vanishing = grad_outliers(
            self.names,
            [self._type(m) for m in range(len(self.modules))],
            grad_norms,
            [g.near * NEAR_LIMIT >= 1.0 for g in self.grad],
        )
        rows = []
        for m, r in enumerate(self.running):
            is_relu = type(self.modules[m]).__name__ in RELU_FAMILY
            dead = r.dead_fraction() if is_relu and self.units_ok[m] else None
            pg = self.param_grad[m]
            row = ModuleStats(
                name=self.names[m],
                type=self._type(m),
                calls=r.calls,
                count=r.count,
                finite=r.n,
                mean=r.mean_or_none(),
                std=r.std(),
                min=r.min_or_none(),
                max=r.max_or_none(),
                mean_abs=r.mean_abs(),
                zero_fraction=r.zero_fraction(),
                nan=r.nan,
                inf=r.inf,
                dead_fraction=dead,
                units=r.units if dead is not None else None,
                grad_norm=grad_norms[m],
                grad_nan=int(self.grad[m].nan),
                grad_inf=int(self.grad[m].inf),
                param_grad_norm=math.sqrt(pg[0]) if pg[3] else None,
                param_grad_nan=int(pg[1]),
                param_grad_inf=int(pg[2]),
                histogram=self.histograms[m] if r.n else (),
                flags=(),
                histogram_edges=self._edges(m) if r.n else (),
                input_from=self.names[self.input_from[m]] if m in self.input_from else None,
            )
            rows.append(
                dataclasses.replace(row, flags=flags_for(row, m in exploding, m in vanishing))
            )
        # Execution order (by first call); modules never called go last, in definition order.
        order = sorted(range(len(rows)), key=lambda m: self.first_call.get(m, len(rows) + m))
        return [rows[m] for m in order]
