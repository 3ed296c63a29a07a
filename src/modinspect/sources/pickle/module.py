"""Module trees rebuilt from unpickled object graphs, without the model's code.

`torch.save(model)` pickles every nn.Module as its class name plus its `__dict__`: `_parameters`,
`_buffers`, `_non_persistent_buffers_set` and `_modules`. A TorchScript archive pickles modules
the same way, with attribute slots instead, and says in its code/ which slots are parameters and
buffers. Both become stand-ins in the weights-only gate; this module walks them into the names,
kinds and class names a live module would give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modinspect.errors import CorruptFileError
from modinspect.sources.base import ModuleInfo
from modinspect.sources.pickle.standins import StandIn, standin_name

MAX_MODULES = (
    200_000  # module paths one checkpoint may describe (a shared submodule counts once per path)
)


@dataclass
class ModuleParts:
    """What one pickled module holds, in registration order."""

    type: str
    training: bool | None
    parameters: list[tuple[str, object]] = field(default_factory=list)
    buffers: list[tuple[str, object, bool | None]] = field(
        default_factory=list
    )  # (name, value, persistent)
    children: list[tuple[str, object]] = field(default_factory=list)


@dataclass
class WalkedModule:
    """A whole module tree: module infos, tensors by dotted name, and each tensor's kind."""

    modules: list[ModuleInfo]
    tensors: dict[str, object]
    kinds: dict[str, tuple[str, bool | None]]  # name -> ('parameter' | 'buffer', persistent)


def walk_modules(root: object, parts_of: Callable[[object], ModuleParts | None]) -> WalkedModule:
    """Depth-first in registration order, like `named_modules(remove_duplicate=False)`; iterative.

    A module that contains itself (a hostile pickle's memo can say so) is not entered again below
    itself; a graph that shares submodules so often that its paths explode is refused.
    """
    modules: list[ModuleInfo] = []
    tensors: dict[str, object] = {}
    kinds: dict[str, tuple[str, bool | None]] = {}
    stack: list[tuple[str, object, frozenset[int]]] = [("", root, frozenset())]
    while stack:
        name, obj, ancestors = stack.pop()
        parts = parts_of(obj)
        if parts is None:
            continue
        if len(modules) >= MAX_MODULES:
            raise CorruptFileError(f"describes more than {MAX_MODULES:,} module paths")
        modules.append(ModuleInfo(name=name, type=parts.type, training=parts.training))
        prefix = f"{name}." if name else ""
        for attr, value in parts.parameters:
            if value is not None:
                tensors[prefix + attr] = value
                kinds[prefix + attr] = ("parameter", None)
        for attr, value, persistent in parts.buffers:
            if value is not None:
                tensors[prefix + attr] = value
                kinds[prefix + attr] = ("buffer", persistent)
        inside = ancestors | {id(obj)}
        for attr, child in reversed(parts.children):
            if id(child) not in inside:
                stack.append((prefix + attr, child, inside))
    return WalkedModule(modules, tensors, kinds)


def nn_module_parts(obj: object) -> ModuleParts | None:
    """The parts of a `torch.save(model)` module stand-in; None for anything else."""
    if not isinstance(obj, StandIn):
        return None
    attributes = obj.attributes
    params, buffers, children = (attributes.get(k) for k in ("_parameters", "_buffers", "_modules"))
    if not (isinstance(params, dict) and isinstance(buffers, dict) and isinstance(children, dict)):
        return None
    non_persistent = attributes.get("_non_persistent_buffers_set")
    hidden = non_persistent if isinstance(non_persistent, set | frozenset) else set()
    training = attributes.get("training")
    return ModuleParts(
        type=standin_name(obj).rpartition(".")[2],
        training=training if isinstance(training, bool) else None,
        parameters=[(k, v) for k, v in params.items() if isinstance(k, str)],
        buffers=[(k, v, k not in hidden) for k, v in buffers.items() if isinstance(k, str)],
        children=[(k, v) for k, v in children.items() if isinstance(k, str)],
    )


def is_pickled_module(obj: object) -> bool:
    return nn_module_parts(obj) is not None


def find_pickled_module(obj: object, keys: tuple[str, ...]) -> tuple[object, str | None] | None:
    """A whole pickled module at the top level or under one of `keys` (or any top-level key)."""
    if is_pickled_module(obj):
        return obj, None
    if not isinstance(obj, dict):
        return None
    for key in (
        *[k for k in keys if k in obj],
        *[k for k in obj if isinstance(k, str) and k not in keys],
    ):
        if is_pickled_module(obj[key]):
            return obj[key], str(key)
    return None


def describe_standins(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


def qualname_of(value: Any) -> str:
    return standin_name(value) if isinstance(value, StandIn) else type(value).__name__
