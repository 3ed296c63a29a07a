"""One walker over what a model takes and returns: tensors inside tuples, lists, dicts and dataclasses.

A leaf: it imports nothing from modinspect, and torch only inside its functions. Its rules, one place:

- containers walked: tuples (named tuples too), lists, dicts (Hugging Face's `ModelOutput` is an
  OrderedDict: its set fields, in order) and dataclass instances (their fields, in order);
- a tensor is a leaf (an `nn.Parameter` too); anything else (a string, a number, None, a set, a custom
  object) is left as it is;
- at most `max_depth` containers deep: what lies deeper is not visited (and left as it is by `map_tensors`),
  so a self-referencing list ends;
- `map_tensors` rebuilds every container it walked with its own type (a named tuple with its fields, a
  `ModelOutput` as a copy of itself, a frozen dataclass through a copy), and leaves one in which nothing
  changed the very same object; with `plain=True` (data to save for a weights-only load) dicts, lists and
  tuples of any type come back plain.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MAX_DEPTH = (
    12  # containers deep: a model's output is rarely more than 3 (a tuple of tuples of tensors)
)


def iter_tensors(
    obj: Any, *, max_depth: int = MAX_DEPTH, into_dataclasses: bool = True
) -> Iterator[torch.Tensor]:
    """Every tensor inside `obj`, depth first, in the containers' order.

    Args:
        obj: a tensor, or a container of them (a forward's output, a batch, an op's arguments).
        max_depth: how many containers deep to look.
        into_dataclasses: look inside dataclass instances (their fields) too.

    Example:
        >>> [t.shape for t in iter_tensors({"x": (torch.zeros(2), [torch.ones(3)])})]
        [torch.Size([2]), torch.Size([3])]
    """
    import torch

    found: list[torch.Tensor] = []
    _collect(obj, torch.Tensor, found, max_depth, into_dataclasses)
    return iter(found)


def _collect(
    obj: Any, tensor: type, found: list[Any], depth_left: int, into_dataclasses: bool
) -> None:
    """Append the tensors in `obj` to `found`: the stats hooks call this twice per module call, so it is
    lean (no generator per level, a tensor among a container's values appended without a call)."""
    if isinstance(obj, tensor):
        found.append(obj)
        return
    if depth_left <= 0:
        return
    if isinstance(obj, dict):
        children: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif into_dataclasses and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    else:
        return
    for child in children:
        if isinstance(child, tensor):
            found.append(child)
        else:
            _collect(child, tensor, found, depth_left - 1, into_dataclasses)


def map_tensors(
    obj: Any,
    fn: Callable[[torch.Tensor], Any],
    *,
    max_depth: int = MAX_DEPTH,
    into_dataclasses: bool = True,
    plain: bool = False,
) -> Any:
    """`obj` with `fn(t)` in place of every tensor `t` in it, each container rebuilt with its own type.

    Args:
        obj: a tensor, or a container of them (a batch to move to a device, an output to detach).
        fn: what each tensor becomes.
        max_depth: how many containers deep to look; deeper containers are kept as they are.
        into_dataclasses: rebuild dataclass instances with their fields mapped too.
        plain: rebuild every dict, list and tuple as a plain one (an OrderedDict or a named tuple too):
            what torch.load's weights-only unpickler, and modinspect's pickle gate, load back.

    Example:
        >>> map_tensors((torch.zeros(2), {"mask": torch.ones(2)}), lambda t: t.to("meta"))
    """
    import torch

    tensor = torch.Tensor

    def walk(item: Any, depth: int) -> Any:
        if isinstance(item, tensor):
            return fn(item)
        children = _children(item, into_dataclasses) if depth < max_depth else None
        if children is None:
            return item
        mapped = [walk(child, depth + 1) for child in children]
        if plain and isinstance(item, dict | list | tuple):
            return _rebuild_plain(item, mapped)
        if all(new is old for new, old in zip(mapped, children, strict=True)):
            return item
        return _rebuild(item, mapped)

    return walk(obj, 0)


def _children(obj: Any, into_dataclasses: bool) -> list[Any] | None:
    """The values a container holds, in order; None for anything the walker does not open."""
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, list | tuple):
        return list(obj)
    if into_dataclasses and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    return None


def _rebuild_plain(obj: dict[Any, Any] | list[Any] | tuple[Any, ...], values: list[Any]) -> Any:
    if isinstance(obj, dict):
        return dict(zip(obj, values, strict=True))
    return values if isinstance(obj, list) else tuple(values)


def _rebuild(obj: Any, values: list[Any]) -> Any:
    """A container of `obj`'s type holding `values` in place of its own (as `_children` listed them)."""
    if isinstance(obj, dict):
        if type(obj) is dict:
            return dict(zip(obj, values, strict=True))
        new = copy.copy(
            obj
        )  # OrderedDict, defaultdict, ModelOutput (whose setitem sets the attribute too)
        for key, value in zip(obj, values, strict=True):
            new[key] = value
        return new
    if isinstance(obj, tuple):
        if hasattr(obj, "_fields"):  # a named tuple takes its fields as arguments
            return type(obj)(*values)
        return tuple(values) if type(obj) is tuple else type(obj)(values)
    if isinstance(obj, list):
        return values if type(obj) is list else type(obj)(values)
    new = copy.copy(obj)  # a dataclass: set on a copy, so init=False and frozen fields map too
    for f, value in zip(dataclasses.fields(obj), values, strict=True):
        object.__setattr__(new, f.name, value)
    return new
