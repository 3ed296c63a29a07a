"""Op-level origin of a NaN/Inf: run only while a flagged batch is replayed, so clean batches pay nothing.

Forward: a TorchDispatchMode checks every aten op's outputs and records the ops that produced a NaN/Inf
from finite tensor inputs, with the module that was running and the user's source line (the innermost
frame outside torch and modinspect). Backward: hooks on every node of the graph say which node is
running, the same mode checks the ops inside it, and anomaly mode (on only during the replay, without
its NaN check) has recorded the forward line that created each node. A TorchFunctionMode maps nodes
to the module whose forward created them.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modinspect.names import short_path
from modinspect.tensors import iter_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_EVENTS = 32  # ops recorded per replay; the first few are all a verdict needs

_THIS_FILE = os.path.abspath(__file__)
_MODINSPECT_DIR = os.path.dirname(os.path.dirname(_THIS_FILE))


@dataclass(frozen=True)
class SourceLine:
    file: str
    line: int
    code: str

    def short(self) -> str:
        """`file:line` with the file relative to the working directory when it is under it."""
        return f"{short_path(self.file)}:{self.line}"


@dataclass(frozen=True)
class OpEvent:
    phase: str  # forward | backward
    op: str  # aten::log
    module: int | None  # collector index of the innermost hooked module running it (forward)
    kind: str  # nan | inf
    dtype: str
    where: SourceLine | None  # the user's line that ran the op
    node: str | None = None  # backward: the autograd node running it (PowBackward0)
    created: SourceLine | None = None  # backward: the forward line that created that node
    node_module: int | None = None  # backward: the module whose forward created the node


def _torch_dir() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__))


def user_frame(skip_dirs: tuple[str, ...]) -> SourceLine | None:
    """The innermost frame outside `skip_dirs`; None when the first such frame is modinspect's own."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if filename == _THIS_FILE:  # the tracer's own frames
            frame = frame.f_back  # type: ignore[assignment]
            continue
        if filename.startswith(_MODINSPECT_DIR + os.sep):
            return None
        if not filename.startswith(skip_dirs) and not filename.startswith("<"):
            code = linecache.getline(filename, frame.f_lineno).strip()
            return SourceLine(filename, frame.f_lineno, code)
        frame = frame.f_back  # type: ignore[assignment]
    return None


def frame_from_traceback(lines: list[str], skip_dirs: tuple[str, ...]) -> SourceLine | None:
    """The innermost user frame of an anomaly-mode traceback (formatted frames, outermost first)."""
    for entry in reversed(lines):
        head, _, rest = entry.strip().partition("\n")
        if not head.startswith('File "'):
            continue
        filename = head[len('File "') :].partition('"')[0]
        try:
            lineno = int(head.partition(", line ")[2].partition(",")[0])
        except ValueError:
            continue
        path = os.path.abspath(filename)
        if path == _THIS_FILE:  # the function mode's own frame
            continue
        if path.startswith(_MODINSPECT_DIR + os.sep):
            return None
        if not path.startswith(skip_dirs):
            return SourceLine(path, lineno, rest.strip())
    return None


class OpTracer:
    """Records, during one replay, the ops that made a NaN/Inf out of finite inputs."""

    def __init__(
        self, current_module: Callable[[], int | None], paused: Callable[[], bool]
    ) -> None:
        self.current_module = current_module
        self.paused = paused
        self.events: list[OpEvent] = []
        self.skip = (_torch_dir() + os.sep,)
        self.node: Any = None  # the backward node running now
        self.node_module: dict[int, tuple[Any, int]] = {}  # id(node) -> (node, module)
        self.parents: dict[
            int, Any
        ] = {}  # id(node) -> a node that feeds it its gradient (toward the loss)
        self._finite: dict[int, tuple[weakref.ref[Any], int, bool]] = {}
        self._handles: list[Any] = []
        self.failures = 0  # ops the tracer could not check

    # ---------------------------------------------------------------- checks
    def _is_finite(self, t: torch.Tensor) -> bool:
        import torch

        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0 or t.is_meta:
            return True
        hit = self._finite.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        ok = bool(torch.isfinite(t).all())
        with contextlib.suppress(TypeError):
            self._finite[id(t)] = (weakref.ref(t), t._version, ok)
        return ok

    def _tensors(self, obj: Any) -> list[torch.Tensor]:
        return list(iter_tensors(obj))

    def on_op(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inputs_ok: bool | None,
        out: Any,
    ) -> None:
        import torch

        bad = [t for t in self._tensors(out) if not self._is_finite(t)]
        if not bad:
            return
        if inputs_ok is None:
            inputs_ok = all(self._is_finite(t) for t in self._tensors((args, kwargs)))
        if not inputs_ok:
            return  # passed on, not produced
        t = bad[0]
        kind = "nan" if bool(torch.isnan(t).any()) else "inf"
        phase = "backward" if self.node is not None else "forward"
        name = func._schema.name
        if phase == "forward":
            event = OpEvent(
                phase, name, self.current_module(), kind, _dtype(t), user_frame(self.skip)
            )
        else:
            event = OpEvent(
                phase,
                name,
                None,
                kind,
                _dtype(t),
                user_frame(self.skip),
                node=self.node.name(),
                created=self._created(self.node),
                node_module=self._module_of(self.node),
            )
        self.events.append(event)

    def _created(self, node: Any) -> SourceLine | None:
        lines = node.metadata.get("traceback_") if hasattr(node, "metadata") else None
        return frame_from_traceback(list(lines), self.skip) if lines else None

    def _module_of(self, node: Any) -> int | None:
        seen = 0
        while node is not None and seen < 10_000:
            hit = self.node_module.get(id(node))
            if hit is not None and hit[0] is node:
                return hit[1]
            node = self.parents.get(id(node))
            seen += 1
        return None

    def note_output(self, out: Any, module: int | None) -> None:
        """Map the autograd nodes of `out` to `module` (innermost first: the first mapping wins)."""
        if module is None:
            return
        for t in self._tensors(out):
            node = t.grad_fn
            if node is not None and id(node) not in self.node_module:
                self.node_module[id(node)] = (node, module)

    # ---------------------------------------------------------------- phases
    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        import torch

        with (
            torch.autograd.set_detect_anomaly(True, check_nan=False),
            _FunctionMode(self),
            _DispatchMode(self),
        ):
            yield

    @contextlib.contextmanager
    def backward(self, loss: torch.Tensor) -> Iterator[None]:
        self._hook_graph(loss.grad_fn)
        try:
            with _DispatchMode(self):
                yield
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self.node = None

    def _hook_graph(self, root: Any) -> None:
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            self._handles.append(node.register_prehook(self._enter(node)))
            self._handles.append(node.register_hook(self._leave))
            for child, _ in node.next_functions:
                if child is not None:
                    self.parents.setdefault(id(child), node)
                    stack.append(child)

    def _enter(self, node: Any) -> Callable[[Any], None]:
        def pre(_grad_outputs: Any) -> None:
            self.node = node

        return pre

    def _leave(self, _grad_inputs: Any, _grad_outputs: Any) -> None:
        self.node = None


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _dispatch_mode_base() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def _function_mode_base() -> type:
    from torch.overrides import TorchFunctionMode

    return TorchFunctionMode


def _DispatchMode(tracer: OpTracer) -> Any:
    base = _dispatch_mode_base()

    class Mode(base):  # type: ignore[misc, valid-type]
        def __torch_dispatch__(
            self,
            func: Any,
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            kwargs = kwargs or {}
            active = len(tracer.events) < MAX_EVENTS and not tracer.paused()
            inputs_ok = None
            if (
                active and func._schema.is_mutable
            ):  # in place: the inputs must be judged before the op
                try:
                    inputs_ok = all(tracer._is_finite(t) for t in tracer._tensors((args, kwargs)))
                except Exception:
                    active = False
            out = func(*args, **kwargs)
            if active:
                try:
                    tracer.on_op(func, args, kwargs, inputs_ok, out)
                except Exception:  # an exotic tensor (sparse, nested) must not break the model
                    tracer.failures += 1
            return out

    return Mode()


def _FunctionMode(tracer: OpTracer) -> Any:
    base = _function_mode_base()

    class Mode(base):  # type: ignore[misc, valid-type]
        def __torch_function__(
            self,
            func: Any,
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            if not tracer.paused():
                try:
                    tracer.note_output(out, tracer.current_module())
                except Exception:
                    tracer.failures += 1
            return out

    return Mode()


# ---------------------------------------------------------------- from events to the reported origin
@dataclass(frozen=True)
class BadTensor:
    """A parameter or buffer that already held NaN/Inf before the forward."""

    name: str
    module: str
    type: str
    nan: int
    inf: int

    def describe(self) -> str:
        parts = [f"{n:,} {what}" for n, what in ((self.nan, "NaN"), (self.inf, "Inf")) if n]
        return "holds " + " and ".join(parts)


def nonfinite_tensors(model: nn.Module) -> list[BadTensor]:
    """Parameters and buffers holding NaN/Inf (one device->host transfer for all of them)."""
    import torch

    owners: dict[int, tuple[str, str, str, torch.Tensor]] = {}
    for mod_name, mod in model.named_modules():
        for name, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            if (
                isinstance(t, torch.Tensor)
                and t.is_floating_point()
                and t.numel()
                and not t.is_meta
            ):
                owners.setdefault(
                    id(t),
                    (f"{mod_name}.{name}" if mod_name else name, mod_name, type(mod).__name__, t),
                )
    if not owners:
        return []
    entries = list(owners.values())
    with torch.no_grad():
        counts = torch.stack(
            [torch.stack([torch.isnan(t).sum(), torch.isinf(t).sum()]).cpu() for *_, t in entries]
        ).tolist()
    return [
        BadTensor(name, mod, typ, int(n), int(i))
        for (name, mod, typ, _), (n, i) in zip(entries, counts, strict=True)
        if n or i
    ]


def _limit(dtype: str) -> str:
    import torch

    return f"{torch.finfo(getattr(torch, dtype)).max:g}"


def refine_origin(
    origin: Any, events: list[OpEvent], weights: list[BadTensor], names: list[str], types: list[str]
) -> tuple[Any, Any]:
    """(origin, backward origin) with the op, source lines, node, weight or overflow filled in."""
    import dataclasses

    from modinspect.reports import NonfiniteOrigin

    def name_of(m: int | None) -> tuple[str | None, str | None]:
        return (names[m], types[m]) if m is not None else (None, None)

    passed = origin.passed_on if origin is not None else ()
    # A bad weight is the cause only where the NaN/Inf appeared, and when no op there made one of its own
    # (an unused buffer left uninitialised may hold NaN garbage without causing anything).
    if (
        origin is not None
        and origin.phase == "forward"
        and origin.cause == "produced"
        and origin.module is not None
    ):
        where = origin.module
        produced_there = any(
            e.phase == "forward" and e.module is not None and names[e.module] == where
            for e in events
        )
        weights = [
            w
            for w in weights
            if not produced_there
            and (where == "" or w.module == where or w.module.startswith(where + "."))
        ]
    else:
        weights = []
    if weights:
        w = weights[0]
        more = f" (and {len(weights) - 1} more tensors)" if len(weights) > 1 else ""
        first = NonfiniteOrigin(
            w.module, w.type, "forward", "weight", passed, tensor=w.name, detail=w.describe() + more
        )
    elif origin is not None and origin.phase == "forward" and origin.cause == "produced":
        fwd = [e for e in events if e.phase == "forward"]
        target = names.index(origin.module) if origin.module in names else None
        event = next((e for e in fwd if e.module == target), fwd[0] if fwd else None)
        first = origin
        if event is not None:
            first = dataclasses.replace(
                origin,
                op=event.op,
                source=event.where.short() if event.where else None,
                code=event.where.code if event.where else None,
            )
            if event.kind == "inf" and event.dtype in ("float16", "bfloat16"):
                who = names[event.module] if event.module is not None else "the model"
                first = dataclasses.replace(
                    first,
                    cause="overflow",
                    detail=f"{who or '(model)'}'s output exceeds "
                    f"{event.dtype}'s largest finite value {_limit(event.dtype)}",
                )
    else:
        first = origin
    back = next((e for e in events if e.phase == "backward"), None)
    if back is None:
        return first, None
    module, typ = name_of(back.node_module)
    fields: dict[str, Any] = {
        "op": back.op,
        "source": back.where.short() if back.where else None,
        "code": back.where.code if back.where else None,
        "node": back.node,
        "created_at": back.created.short() if back.created else None,
        "created_code": back.created.code if back.created else None,
    }
    if first is None:
        return NonfiniteOrigin(module, typ, "backward", "produced", (), **fields), None
    if first.phase == "backward" and first.cause == "produced":
        return dataclasses.replace(first, **fields), None
    # The forward, a weight, the input or the loss came first: a backward origin of its own is named too.
    return first, NonfiniteOrigin(module, typ, "backward", "produced", (), **fields)
