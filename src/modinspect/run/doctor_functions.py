"""doctor's checks of custom torch.autograd.Functions: gradcheck in float64 on small inputs, ctx tensors.

A Function used by the forward is found twice: its `forward` frame is seen while the model runs (which
gives its arguments and the module that applied it), and its `<Name>Backward` node, whose `_forward_cls`
is the Function, is found in the backward graph (which gives the attributes kept on ctx).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modinspect.analysis.doctor_code import finding
from modinspect.reports.doctor import Finding, Location

if TYPE_CHECKING:
    import torch

SMALL_DIM = 4  # each captured dimension is cut to this many for gradcheck
MAX_FULL_NUMEL = (
    4096  # when the small call fails, the captured size itself is tried up to this many elements
)
DEFAULT_BUDGET_S = 2.0  # CPU seconds of checking per Function


@dataclass
class FunctionCall:
    """The first call of a Function during the forward: its class, the module that applied it, its arguments
    (tensors cut to SMALL_DIM per dimension, detached; the full ones only when small enough)."""

    cls: type
    module: str
    small: tuple[Any, ...]
    full: tuple[Any, ...] | None
    requires_grad: tuple[bool, ...]


def capture(cls: type, module: str, args: tuple[Any, ...]) -> FunctionCall:
    import torch

    def cut(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        if a.dim() == 0:
            return a.detach().clone()
        return a.detach()[tuple(slice(0, min(d, SMALL_DIM)) for d in a.shape)].clone()

    total = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
    full = (
        tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
        if total <= MAX_FULL_NUMEL
        else None
    )
    grads = tuple(bool(isinstance(a, torch.Tensor) and a.requires_grad) for a in args)
    return FunctionCall(cls, module, tuple(cut(a) for a in args), full, grads)


def ctx_tensor_findings(nodes: dict[type, Any], calls: dict[type, FunctionCall]) -> list[Finding]:
    """Tensors kept as ctx attributes (visible on the graph node) instead of ctx.save_for_backward."""
    import torch

    out: list[Finding] = []
    for cls, node in nodes.items():
        try:
            attrs = vars(node)
        except TypeError:
            continue
        module = calls[cls].module if cls in calls else ""
        for name, value in attrs.items():
            if isinstance(value, torch.Tensor):
                out.append(
                    finding(
                        "autograd-function-ctx-tensor",
                        "warning",
                        Location(module, name, function=cls.__name__),
                        f"{cls.__name__} keeps a tensor as ctx.{name}: autograd cannot check it for "
                        "in-place changes, and it may keep the graph alive",
                        f"ctx.save_for_backward({name}) in forward, ctx.saved_tensors in backward",
                    )
                )
    return out


def count_from_error(message: str, calls: dict[type, FunctionCall]) -> Finding | None:
    """The Function named by autograd's 'returned an incorrect number of gradients' error, as a finding."""
    import re

    m = re.search(
        r"function (\w+?)Backward returned an incorrect number of gradients \(expected (\d+), got (\d+)\)",
        message,
    )
    if m is None:
        return None
    name = m.group(1)
    call = next((c for cls, c in calls.items() if cls.__name__ == name), None)
    return _count_finding(name, call.module if call else "", int(m.group(2)), int(m.group(3)))


def _count_finding(name: str, module: str, expected: int, got: int) -> Finding:
    return finding(
        "autograd-function-gradient-count",
        "error",
        Location(module, function=name),
        f"{name}.backward returns {got} gradient(s) for {expected} forward argument(s): backward raises",
        "return one value per forward argument, None for the non-tensor ones",
    )


class _OutOfBudget(Exception):
    pass


def check_function(
    call: FunctionCall,
    expect: dict[str, float],
    budget_s: float = DEFAULT_BUDGET_S,
    already: set[str] | None = None,
) -> tuple[list[Finding], list[str]]:
    """gradcheck `call.cls` in float64: fast mode first, then the full Jacobians to describe a mismatch."""
    import torch

    name = call.cls.__name__
    start = time.process_time()

    def spend() -> None:
        if time.process_time() - start > budget_s:
            raise _OutOfBudget

    for args in (call.small, call.full):
        if args is None:
            continue
        try:
            with torch.enable_grad():
                return _check(call, args, expect, spend)
        except _OutOfBudget:
            return [], [
                f"gradcheck of {name} was cut short after {budget_s:g} s of CPU time: not checked"
            ]
        except RuntimeError as exc:
            found = count_from_error(str(exc), {call.cls: call})
            if found is not None:
                return ([] if already and name in already else [found]), []
            error = exc
        except Exception as exc:  # the Function cannot run on these inputs
            error = exc  # type: ignore[assignment]
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return [], [
        f"{name} could not be checked in float64 on inputs shaped like the captured ones ({first[:200]})"
    ]


def _check(
    call: FunctionCall, args: tuple[Any, ...], expect: dict[str, float], spend: Callable[[], None]
) -> tuple[list[Finding], list[str]]:
    import torch

    name = call.cls.__name__
    positions = [
        i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
    ]
    wanted = [i for i in positions if call.requires_grad[i]] or positions
    if not wanted:
        return [], []
    inputs = tuple(args[i].detach().double().requires_grad_(True) for i in wanted)
    fixed = [
        a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(fixed)
        for i, t in zip(wanted, tensors, strict=True):
            full[i] = t
        out = call.cls.apply(*full)  # type: ignore[attr-defined]
        outs = out if isinstance(out, tuple | list) else (out,)
        return tuple(o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point())

    outs = fn(*inputs)
    # One backward first: a wrong number of gradients raises here, with autograd's own message.
    torch.autograd.grad([o.sum() for o in outs if o.requires_grad], inputs, allow_unused=True)
    spend()
    if torch.autograd.gradcheck(fn, inputs, fast_mode=True, raise_exception=False):
        return [], []
    spend()
    analytic, numerical = _jacobians(fn, inputs, spend)
    worst = float((analytic - numerical).abs().max())
    multiple = _multiple(analytic, numerical)
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    if (
        multiple is not None
        and name in expect
        and math.isclose(multiple, expect[name], rel_tol=1e-3, abs_tol=1e-9)
    ):
        return [], [
            f"{name}: backward returns {multiple:.6g} × the true gradient, as declared (--expect)"
        ]
    where = Location(call.module, function=name)
    if multiple is not None:
        declared = f" (declared {expect[name]:g})" if name in expect else ""
        message = (
            f"{name}.backward returns {multiple:.6g} × the true gradient{declared} (gradcheck in float64 on "
            f"inputs {shapes}; largest error {worst:.3g})"
        )
        fix = f"fix backward; if intended (a gradient-reversal layer), declare it: --expect {name}={multiple:.6g}"
    else:
        message = (
            f"{name}.backward disagrees with the numerical gradient: largest error {worst:.3g} on inputs "
            f"{shapes} (float64), and no constant multiple explains it"
        )
        fix = "fix backward: it does not compute the gradient of forward"
    detail = f"{multiple:.6g}" if multiple is not None else "not-a-multiple"
    return [finding("autograd-function-wrong-backward", "error", where, message, fix, detail)], []


def _jacobians(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    spend: Callable[[], None],
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(analytic, numerical) Jacobians, outputs × inputs flattened: backward row by row, central differences."""
    import torch

    outs = fn(*inputs)
    flat_out = torch.cat([o.reshape(-1) for o in outs])
    rows = []
    for i in range(flat_out.numel()):
        grads = torch.autograd.grad(flat_out[i], inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(x)).reshape(-1)
                    for g, x in zip(grads, inputs, strict=True)
                ]
            )
        )
        spend()
    analytic = torch.stack(rows)
    cols = []
    with torch.no_grad():
        for k, x in enumerate(inputs):
            for j in range(x.numel()):
                step = torch.zeros_like(x).reshape(-1)
                step[j] = eps
                step = step.view_as(x)
                plus = [t + step if n == k else t for n, t in enumerate(inputs)]
                minus = [t - step if n == k else t for n, t in enumerate(inputs)]
                hi = torch.cat([o.reshape(-1) for o in fn(*plus)])
                lo = torch.cat([o.reshape(-1) for o in fn(*minus)])
                cols.append((hi - lo) / (2 * eps))
                spend()
    numerical = torch.stack(cols, dim=1)
    return analytic, numerical


def _multiple(analytic: torch.Tensor, numerical: torch.Tensor) -> float | None:
    """c when analytic = c × numerical (least squares, residual below 1e-4 of the norm), else None."""
    denom = float((numerical * numerical).sum())
    if denom == 0.0:
        return None
    c = float((analytic * numerical).sum()) / denom
    scale = max(float(analytic.norm()), float(numerical.norm()))
    if float((analytic - c * numerical).norm()) > 1e-4 * scale:
        return None
    return round(c, 6)
