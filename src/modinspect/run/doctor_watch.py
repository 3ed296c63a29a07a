"""The watched forward pass behind `modinspect.doctor`: global module hooks and a profile function.

The hooks give the call stack of the model's modules, BatchNorm inputs, ReLU units, block outputs and which
module returned which tensor; the profile function sees the frames of the model's forwards (a forward that
starts outside its module's __call__ is a bypass), of `nn.Module.__init__` and `nn.Parameter.__new__` (built
during the forward), and of custom autograd Functions' `forward` (their arguments, for gradcheck).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modinspect.run.doctor_functions import FunctionCall, capture

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_CHAIN = 4  # a container with this many children of one class is a chain of blocks
RELU_TYPES = ("ReLU", "ReLU6")


@dataclass
class Watch:
    """What one watched forward pass saw."""

    known: dict[int, str]  # id(module) -> path
    stack: list[str] = field(default_factory=list)
    pending: dict[int, int] = field(default_factory=dict)
    active: dict[int, int] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    bypassed: dict[int, int] = field(default_factory=dict)
    created_modules: list[tuple[str, Any]] = field(default_factory=list)
    created_params: list[tuple[str, Any]] = field(default_factory=list)
    functions: dict[type, FunctionCall] = field(default_factory=dict)
    batch_of_one: dict[str, int] = field(
        default_factory=dict
    )  # BatchNorm path -> values per channel
    alive: dict[str, Any] = field(default_factory=dict)  # ReLU path -> bool per unit
    examples: dict[str, int] = field(default_factory=dict)
    first_std: dict[int, float] = field(default_factory=dict)
    producer: dict[int, tuple[Any, str]] = field(
        default_factory=dict
    )  # id(output) -> (output, innermost path)
    profiled: bool = True  # False when another profiler was active: no frames were watched

    def top(self) -> str:
        return self.stack[-1] if self.stack else ""


def _function_codes() -> dict[Any, type]:
    """forward code objects of every torch.autograd.Function subclass defined outside torch."""
    import torch

    codes: dict[Any, type] = {}
    todo = list(torch.autograd.Function.__subclasses__())
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("torch."):
            continue
        forward = vars(cls).get("forward")
        code = getattr(getattr(forward, "__func__", forward), "__code__", None)
        if code is not None:
            codes[code] = cls
    return codes


def _forward_codes(model: nn.Module) -> set[Any]:
    """The code of every forward in the model's classes and their bases, decorators' wrappers included."""
    codes: set[Any] = set()
    for cls in {type(m) for m in model.modules()}:
        for klass in cls.__mro__:
            fwd = vars(klass).get("forward")
            while fwd is not None:
                code = getattr(fwd, "__code__", None)
                if code is not None:
                    codes.add(code)
                fwd = getattr(fwd, "__wrapped__", None)
    return codes


@contextlib.contextmanager
def watching(model: nn.Module) -> Iterator[Watch]:
    """Global module hooks and a profile function for the duration of one forward pass."""
    import torch
    from torch.nn.modules import module as module_mod
    from torch.nn.modules.batchnorm import _BatchNorm

    watch = Watch(known={id(m): p for p, m in model.named_modules(remove_duplicate=False)})
    chains = _chain_children(model)
    relus = {id(m) for m in model.modules() if type(m).__name__ in RELU_TYPES}
    function_codes = _function_codes()
    forward_codes = _forward_codes(model)
    init_code = torch.nn.Module.__init__.__code__
    param_new = torch.nn.Parameter.__new__.__code__

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        key = id(module)
        path = watch.known.get(key)
        if path is None:
            return
        watch.pending[key] = watch.pending.get(key, 0) + 1
        watch.active[key] = watch.active.get(key, 0) + 1
        watch.calls[key] = watch.calls.get(key, 0) + 1
        watch.stack.append(path)
        if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 1:
                watch.batch_of_one.setdefault(path, x.numel() // max(x.shape[1], 1))

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        key = id(module)
        path = watch.known.get(key)
        if path is None:
            return
        watch.active[key] -= 1
        watch.pending[key] = max(0, watch.pending.get(key, 0) - 1) if watch.pending.get(key) else 0
        if watch.stack:
            watch.stack.pop()
        first = _first_tensor(output)
        if first is None:
            return
        if id(first) not in watch.producer:
            watch.producer[id(first)] = (first, path)
        if (
            key in chains
            and key not in watch.first_std
            and first.is_floating_point()
            and first.numel() > 1
        ):
            watch.first_std[key] = float(first.detach().float().std())
        if key in relus:
            _track_units(watch, path, first)

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code in forward_codes:
                _forward_started(watch, frame)
            elif code is init_code:
                self = frame.f_locals.get("self")
                if self is not None and id(self) not in watch.known:
                    watch.created_modules.append((watch.top(), self))
            elif code in function_codes:
                _function_started(watch, function_codes[code], frame)
        elif event == "return" and frame.f_code is param_new and arg is not None:
            watch.created_params.append((watch.top(), arg))

    handles = [
        module_mod.register_module_forward_pre_hook(pre),
        module_mod.register_module_forward_hook(post),
    ]
    # Another profiler (cProfile, a debugger's) cannot be chained or restored through sys.setprofile: leave it.
    watch.profiled = sys.getprofile() is None
    if watch.profiled:
        sys.setprofile(profile)
    try:
        yield watch
    finally:
        if watch.profiled:
            sys.setprofile(None)
        for h in handles:
            h.remove()


def _first_tensor(output: Any) -> torch.Tensor | None:
    from modinspect.tensors import iter_tensors

    return next(iter_tensors(output), None)


def _forward_started(watch: Watch, frame: Any) -> None:
    code = frame.f_code
    if code.co_argcount < 1:
        return
    self = frame.f_locals.get(code.co_varnames[0])
    key = id(self)
    if key not in watch.known:
        return
    if watch.pending.get(key, 0) > 0:
        watch.pending[key] -= 1
    elif watch.active.get(key, 0) == 0:
        watch.bypassed[key] = watch.bypassed.get(key, 0) + 1


def _function_started(watch: Watch, cls: type, frame: Any) -> None:
    import torch

    code = frame.f_code
    names = code.co_varnames[: code.co_argcount]
    values = [frame.f_locals.get(n) for n in names]
    star = code.co_flags & 0x04  # *args
    if star:
        values += list(
            frame.f_locals.get(code.co_varnames[code.co_argcount + code.co_kwonlyargcount], ())
        )
    ctx_type = type(values[0]) if values else None
    if ctx_type is not None and hasattr(ctx_type, "_forward_cls"):
        cls = ctx_type._forward_cls
        values = values[1:]
    elif values and not isinstance(values[0], torch.Tensor) and "setup_context" not in vars(cls):
        values = values[1:]
    if cls not in watch.functions:
        watch.functions[cls] = capture(cls, watch.top(), tuple(values))


def _track_units(watch: Watch, path: str, out: torch.Tensor) -> None:
    from modinspect.run.collector import unit_dim

    dim = unit_dim(out.ndim)
    if dim is None or not out.is_floating_point() or out.ndim < 2:
        return
    other = [d for d in range(out.ndim) if d != dim]
    alive = out.detach().sum(dim=other) != 0
    prev = watch.alive.get(path)
    if prev is not None and prev.shape != alive.shape:
        watch.examples[path] = -(10**9)  # units changed between calls: no per-unit answer
        return
    watch.alive[path] = alive if prev is None else prev | alive
    watch.examples[path] = watch.examples.get(path, 0) + out.numel() // max(out.shape[dim], 1)


def _chain_children(model: nn.Module) -> dict[int, str]:
    """Children of containers with MIN_CHAIN or more children of one class: id -> container path."""
    out: dict[int, str] = {}
    for path, module in model.named_modules():
        children = list(module.children())
        types = [type(c) for c in children]
        for t in set(types):
            if types.count(t) >= MIN_CHAIN:
                out.update({id(c): path for c in children if type(c) is t})
    return out


@contextlib.contextmanager
def uses(tensors: list[torch.Tensor]) -> Iterator[set[int]]:
    """The ids of `tensors` that some torch operation takes as an argument while the block runs."""
    used: set[int] = set()
    if not tensors:
        yield used
        return
    from torch.overrides import TorchFunctionMode

    from modinspect.tensors import iter_tensors

    wanted = {id(t) for t in tensors}

    class Uses(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            # nested too: torch.cat([x, TABLE]) takes TABLE inside a list
            for t in iter_tensors((args, kwargs)):
                if id(t) in wanted:
                    used.add(id(t))
            return func(*args, **(kwargs or {}))

    with Uses():
        yield used
