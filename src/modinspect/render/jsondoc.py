"""Report dataclasses -> JSON-ready dicts, generated from their fields with one explicit table per report.

Every field of every dataclass a report holds is in its document under its own name, unless the report's
table says otherwise, by name: `rename` (another key), `exclude` (left out, with the reason), `convert`
(another JSON shape: pairs as objects, a list of names), `inline` (a nested record's keys spliced in place),
`add` (a key that is not a field: a property, a value looked up in the report), `after` (key order, which
is API: today's documents fix it). Values: tuples become lists, non-finite floats null (JSON has no NaN),
nested dataclasses their own documents. `tests/test_emit.py` walks every dataclass a registered report can
hold and fails on a field that is neither in its document nor excluded by name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")

Getter = Callable[[Any, "Walk"], Any]


@dataclass(frozen=True)
class Doc:
    """How one dataclass becomes a JSON object. Keys not named here: its fields, in their order.

    Attributes:
        rename: field -> its key.
        exclude: field -> why the document leaves it out.
        convert: field -> a function giving its value another shape (pairs as objects, names only).
        inline: fields holding a record whose keys are spliced in at the field's place.
        add: key -> a function of (the object, the walk) giving a value that is not a field.
        after: key -> the key it follows ("" for first), applied in order: the order is API.
        items: key -> the Doc of the records it holds, where not their type's.
    """

    rename: Mapping[str, str] = field(default_factory=dict)
    exclude: Mapping[str, str] = field(default_factory=dict)
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    inline: tuple[str, ...] = ()
    add: Mapping[str, Getter] = field(default_factory=dict)
    after: Mapping[str, str] = field(default_factory=dict)
    items: Mapping[str, Doc] = field(default_factory=dict)


def finite(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: non-finite floats become null."""
    return value if value is not None and math.isfinite(value) else None


def pairs(first: str, second: str) -> Callable[[Any], list[dict[str, Any]]]:
    """A tuple of (x, y) pairs as a list of {first: x, second: y} objects."""
    return lambda items: [{first: a, second: b} for a, b in items]


class Walk:
    """One document being built: the report at its root, and tables looked up in it once."""

    __slots__ = ("_schema", "_tables", "root")

    def __init__(self, schema: Schema[Any], root: Any) -> None:
        self._schema = schema
        self._tables: dict[str, dict[Any, Any]] = {}
        self.root = root

    def lookup(self, name: str) -> dict[Any, Any]:
        """The root's field `name`, a tuple of (key, value) pairs, as a dict (built once per document)."""
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = dict(getattr(self.root, name))
        return table

    def value(self, value: Any, doc: Doc | None = None) -> Any:
        """Any field value as JSON: records through their Doc (`doc`, else their type's)."""
        kind = type(value)
        if value is None or kind is str or kind is int or kind is bool:
            return value
        if kind is float:
            return value if math.isfinite(value) else None
        if kind is tuple or kind is list:
            first = type(value[0]) if value else None
            if first is not None and dataclasses.is_dataclass(first):
                encode = self._schema.encoder(first, doc)  # a list of records: one lookup
                if all(type(v) is first for v in value):
                    return [encode(v, self) for v in value]
            return [self.value(v, doc) for v in value]
        if kind is dict:
            return {k: self.value(v, doc) for k, v in value.items()}
        if dataclasses.is_dataclass(value):
            return self.record(value, doc)
        raise TypeError(f"no JSON for a {kind.__name__} in a {type(self.root).__name__}")

    def record(self, obj: Any, doc: Doc | None = None) -> dict[str, Any]:
        return self._schema.encoder(type(obj), doc)(obj, self)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(hint: Any) -> bool:
    """Whether a field's values are already JSON as they are: str, int, bool, None, a Literal of those."""
    if hint in (str, int, bool, type(None)):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_scalar(a) for a in typing.get_args(hint))
    return False


def _floaty(hint: Any) -> bool:
    """float or float | None: through finite()."""
    args = set(typing.get_args(hint)) if typing.get_origin(hint) is types.UnionType else {hint}
    return float in args and args <= {float, type(None)}


def _scalars(hint: Any) -> bool:
    """tuple[str, ...], tuple[int, ...]: list() makes them JSON."""
    args = typing.get_args(hint)
    return (
        typing.get_origin(hint) is tuple
        and len(args) == 2
        and args[1] is Ellipsis
        and _scalar(args[0])
    )


Encoder = Callable[[Any, "Walk"], dict[str, Any]]


class Schema(Generic[R]):
    """One report type's document: the envelope, then its fields as its table of Docs says."""

    def __init__(
        self,
        report: type[R],
        docs: Mapping[type, Doc],
        head: Callable[[], dict[str, Any]],
    ) -> None:
        self.report = report
        self.docs = docs
        self.head = head
        self._encoders: dict[tuple[type, int, frozenset[str]], Encoder] = {}

    def document(self, report: R, empty: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The document; keys in `empty` (tree's modules and tensors, written record by record) as []."""
        body = self.encoder(self.report, None, empty)(report, Walk(self, report))
        return {**self.head(), **body}

    def doc(self, cls: type, doc: Doc | None = None) -> Doc:
        return doc if doc is not None else self.docs.get(cls, _DEFAULT)

    def keys(self, cls: type, doc: Doc | None = None) -> list[str]:
        """The keys of `cls`'s document under `doc` (its type's by default), in order."""
        return [key for key, _ in self._steps(cls, self.doc(cls, doc), "o", {})]

    def encoder(self, cls: type, doc: Doc | None, empty: frozenset[str] = frozenset()) -> Encoder:
        """A function (record, walk) -> its document, compiled once per type and Doc.

        Compiled as dataclasses compiles __init__: one dict display reading each field, so a document of
        100k records costs what the hand-written mapping did.
        """
        cache_key = (cls, id(doc), empty)
        found = self._encoders.get(cache_key)
        if found is None:
            names: dict[str, Any] = {"F": finite}
            steps = self._steps(cls, self.doc(cls, doc), "o", names)
            body = ", ".join(f"{key!r}: {'[]' if key in empty else expr}" for key, expr in steps)
            bind = "    V = w.value\n" if "V(" in body else ""
            source = f"def encode(o, w):\n{bind}    return {{{body}}}\n"
            exec(compile(source, f"<document of {cls.__name__}>", "exec"), names)
            found = self._encoders[cache_key] = names["encode"]
        return found

    def _steps(
        self, cls: type, doc: Doc, path: str, names: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """(key, Python expression of its value) for `cls`'s keys; `path` reaches the record from `o`."""

        def name(value: Any) -> str:
            names[f"N{len(names)}"] = value
            return f"N{len(names) - 1}"

        hints = _hints(cls)
        out: list[tuple[str, str]] = []
        for f in dataclasses.fields(cls):
            if f.name in doc.exclude:
                continue
            hint, expr = hints[f.name], f"{path}.{f.name}"
            if f.name in doc.inline:
                out += self._steps(hint, self.doc(hint), expr, names)
                continue
            key = doc.rename.get(f.name, f.name)
            items = doc.items.get(key)
            convert = doc.convert.get(f.name)
            if convert is not None:
                expr = f"V({name(convert)}({expr}), {name(items)})"
            elif _floaty(hint):
                expr = f"F({expr})"
            elif _scalars(hint):
                expr = f"list({expr})"
            elif not _scalar(hint):
                expr = f"V({expr}, {name(items)})"
            out.append((key, expr))
        for key, add in doc.add.items():
            out.append((key, f"V({name(add)}({path}, w), {name(doc.items.get(key))})"))
        return _ordered(out, doc.after)


def _ordered(steps: list[tuple[str, str]], after: Mapping[str, str]) -> list[tuple[str, str]]:
    for key, anchor in after.items():
        keys = [k for k, _ in steps]
        if key not in keys or (anchor and anchor not in keys):
            raise KeyError(f"after={{{key!r}: {anchor!r}}} names a key the document does not have")
        step = steps.pop(keys.index(key))
        steps.insert([k for k, _ in steps].index(anchor) + 1 if anchor else 0, step)
    return steps


_DEFAULT = Doc()


def fields_of(schema: Schema[Any]) -> dict[type, Doc]:
    """Every dataclass the schema's report can hold (through its fields' types), with the Doc it goes by."""
    seen: dict[type, Doc] = {}
    todo: list[type] = [schema.report]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen[cls] = schema.doc(cls)
        for hint in _hints(cls).values():
            todo += [
                t for t in _leaf_types(hint) if isinstance(t, type) and dataclasses.is_dataclass(t)
            ]
    return seen


def _leaf_types(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    if not args:
        return [hint]
    return [t for a in args if a is not Ellipsis for t in _leaf_types(a)]
