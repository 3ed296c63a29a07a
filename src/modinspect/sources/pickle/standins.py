"""Inert stand-ins for the globals a pickle names but the weights-only gate never imports.

A checkpoint that holds an `argparse.Namespace`, a numpy array or a whole `torch.save(model)`
names classes outside the allowlist. Instead of importing them, the restricted unpickler hands
the pickle a stand-in class per name. Every way a pickle can use a global ends in one of the
stand-in's own methods, each of which only records what it was given:

- REDUCE calls it (`cls(*args)`), NEWOBJ / NEWOBJ_EX call `cls.__new__(cls, *args)`;
- BUILD calls `__setstate__(state)`;
- SETITEM(S), APPEND(S), ADDITEMS call `__setitem__`, `extend`/`append`, `add`;
- REDUCE on an instance calls it, which yields another stand-in.

None of them calls, hashes, compares or formats anything it is given: the values are the
pickle's own (builtins, gate references, other stand-ins), stored as they are.
"""

from __future__ import annotations

from typing import Any

from modinspect.errors import CorruptFileError


class StandIn:
    """An instance of a class the pickle named, described by what it was built from."""

    qualname = "?"
    calls: dict[str, None] | None = None  # the registry's record of the names the pickle called
    args: tuple[object, ...]
    kwargs: dict[str, object]
    state: object
    items: list[tuple[object, object]]
    elements: list[object]

    def __new__(cls, *args: object, **kwargs: object) -> StandIn:
        if (
            cls.calls is not None
        ):  # REDUCE, NEWOBJ, INST, OBJ, copyreg._reconstructor: torch.load would call it
            cls.calls[cls.qualname] = None
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = []
        self.elements = []
        return self

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass  # __new__ recorded the arguments; REDUCE passes them here a second time

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __setitem__(self, key: object, value: object) -> None:
        self.items.append((key, value))

    def append(self, value: object) -> None:
        self.elements.append(value)

    def extend(self, values: list[object]) -> None:
        self.elements.extend(values)

    def add(self, value: object) -> None:
        self.elements.append(value)

    def __call__(self, *args: object, **kwargs: object) -> StandIn:
        calls = type(self).calls
        if calls is not None:  # calling an instance runs its class's __call__
            calls[type(self).qualname] = None
        call = _CALL_CLASS.__new__(_CALL_CLASS, self, *args, **kwargs)
        return call

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"

    @property
    def attributes(self) -> dict[str, object]:
        """The state when it is an attribute dict (a plain object, a module); else empty."""
        state = self.state
        if (
            isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict)
        ):  # (dict, slots)
            state = state[0]
        if isinstance(state, dict) and all(isinstance(k, str) for k in state):
            return state
        return {}


class _Call(StandIn):
    """What calling a stand-in instance returns: args[0] is the callee."""

    qualname = "<call>"


_CALL_CLASS = _Call
MAX_CLASSES = 10_000  # distinct names one pickle may stand in for: each costs a class object


class StandInRegistry:
    """The stand-in classes of one unpickling, by dotted name."""

    def __init__(self) -> None:
        self.classes: dict[str, type[StandIn]] = {}
        self.called: dict[str, None] = {}  # names the pickle called (an ordered set)

    def cls(self, dotted: str) -> type[StandIn]:
        found = self.classes.get(dotted)
        if found is None:
            if len(self.classes) >= MAX_CLASSES:
                raise CorruptFileError(f"names more than {MAX_CLASSES:,} distinct globals")
            # The name is the file's: never a type name.
            found = type("StandIn", (StandIn,), {"qualname": dotted, "calls": self.called})
            self.classes[dotted] = found
        return found

    @property
    def names(self) -> list[str]:
        return list(self.classes)


def safe_reconstructor(cls: object, base: object, state: object) -> object:
    """copyreg._reconstructor, which protocol 0-1 pickles use for plain objects: a stand-in instance."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls.__new__(cls) if state is None else cls.__new__(cls, state)
    raise CorruptFileError("rebuilds an object of a class it does not name")


def is_standin(value: object) -> bool:
    return isinstance(value, StandIn)


def standin_name(value: StandIn) -> str:
    return type(value).qualname


# ---------------------------------------------------------------- short descriptions


def describe(value: object, width: int = 80) -> str:
    """A one-line description of any unpickled value, at most about `width` characters.

    Bounded whatever the value: containers show a few items, nesting stops after two levels, and
    integers too long to print say how many bits they have (10**5000 has 16,610).
    """
    text = _describe(value, 2, width)
    return text if len(text) <= width else text[: width - 1] + "…"


def _describe(value: object, depth: int, width: int) -> str:
    from modinspect.sources.pickle.refs import BoundedCall, DtypeRef, TensorRef

    if isinstance(value, TensorRef):
        return f"tensor {list(value.shape)} {value.dtype}"
    if isinstance(value, DtypeRef):
        return f"torch.{value.name}"
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"int of {value.bit_length():,} bits"
    if isinstance(value, float | complex):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    if isinstance(value, bytes | bytearray):
        return f"{type(value).__name__} ({len(value):,} bytes)"
    if isinstance(value, StandIn):
        return _describe_standin(value, depth, width)
    if isinstance(value, BoundedCall):  # the allowlist's list, set, dict... given as an argument
        return value.name
    if isinstance(value, type):  # a class given as an argument: defaultdict(list), partial(Linear)
        return value.qualname if issubclass(value, StandIn) else value.__name__
    if isinstance(value, dict):
        if depth <= 0:
            return f"dict ({len(value):,} keys)"
        return "{" + _join(((_key(k), v) for k, v in value.items()), len(value), depth, width) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        name = type(value).__name__
        if depth <= 0:
            return f"{name} ({len(value):,} items)"
        inner = _join(((None, v) for v in value), len(value), depth, width)
        return {"list": f"[{inner}]", "tuple": f"({inner})"}.get(name, f"{name}({{{inner}}})")
    return type(value).__name__


def _key(key: object) -> str:
    return key if isinstance(key, str) and key.isidentifier() else _describe(key, 0, 40)


def _join(pairs: Any, count: int, depth: int, width: int, sep: str = ": ") -> str:
    parts: list[str] = []
    used = 0
    for key, value in pairs:
        text = _describe(value, depth - 1, width)
        part = text if key is None else f"{key}{sep}{text}"
        if used + len(part) > width and parts:
            break
        parts.append(part)
        used += len(part) + 2
    if len(parts) < count:
        parts.append(f"… {count - len(parts):,} more")
    return ", ".join(parts)


def _describe_standin(value: StandIn, depth: int, width: int) -> str:
    name = standin_name(value)
    if depth < 2:  # nested: the class name is enough, the top level gave the module
        name = name.rpartition(".")[2]
    if isinstance(value, _Call):
        callee = value.args[0] if value.args else None
        name = f"{_describe(callee, 0, 40)}(…)"
        args: tuple[object, ...] = value.args[1:]
    else:
        args = value.args
    attributes = value.attributes
    if (
        "_val" in attributes and depth > -4
    ):  # an OmegaConf value node: its value is the point (a node's
        return _describe(
            attributes["_val"], depth - 1, width
        )  # _val may be a node: the chain is bounded)
    if depth <= 0:
        return name
    content = attributes.get("_content")
    if isinstance(content, dict):  # an OmegaConf DictConfig: show its keys, not its bookkeeping
        return f"{name}({_join(((_key(k), v) for k, v in content.items()), len(content), depth, width, sep='=')})"
    if isinstance(content, list):
        return f"{name}({_join(((None, v) for v in content), len(content), depth, width)})"
    pairs: list[tuple[str | None, object]] = [(None, a) for a in args]
    pairs += [(k, v) for k, v in value.kwargs.items()]
    if attributes:
        pairs += [(k, v) for k, v in attributes.items() if not k.startswith("_")]
    elif value.state is not None:
        pairs.append(("state", value.state))
    pairs += [(_key(k), v) for k, v in value.items]
    if value.elements:  # APPENDS / ADDITEMS: one list, as the object's own repr would show it
        pairs.append((None, value.elements))
    return f"{name}({_join(iter(pairs), len(pairs), depth, width, sep='=')})"
