"""The module tree of a Source: recursive counts with each storage once, tied names, totals."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

from modinspect.analysis.keymap import is_index
from modinspect.report import DtypeTotal, ModuleNode, ModuleRow, TensorRow, Totals, TreeReport
from modinspect.sources.base import Source, TensorInfo, tied_groups


@dataclass
class _Node:
    name: str
    type: str | None = None
    training: bool | None = None
    tensors: list[TensorInfo] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _ensure(nodes: dict[str, _Node], name: str) -> _Node:
    if name not in nodes:
        parent = _ensure(nodes, _parent(name)) if name else None
        nodes[name] = _Node(name)
        if parent is not None:
            parent.children[name] = nodes[name]
    return nodes[name]


def _storage_id(t: TensorInfo) -> str:
    return t.storage if t.storage is not None else f"name:{t.name}"


def _unique(tensors: Iterable[TensorInfo]) -> list[TensorInfo]:
    seen: set[str] = set()
    out = []
    for t in tensors:
        key = _storage_id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _subtree_tensors(node: _Node) -> list[TensorInfo]:
    out = list(node.tensors)
    for child in node.children.values():
        out.extend(_subtree_tensors(child))
    return out


def _is_param(t: TensorInfo, module_known: bool) -> bool:
    # In a bare state dict kinds are unknown: every tensor counts as a parameter.
    return t.kind == "parameter" or (t.kind == "unknown" and not module_known)


def _row(node: _Node, module_known: bool) -> ModuleRow:
    tensors = _unique(_subtree_tensors(node))
    params = [t for t in tensors if _is_param(t, module_known)]
    trainable = sum(t.numel for t in params if t.requires_grad) if module_known else None
    return ModuleRow(
        name=node.name, type=node.type, params=sum(t.numel for t in params),
        bytes=sum(t.nbytes for t in tensors), trainable=trainable, training=node.training,
    )


def _signature(node: _Node, cache: dict[str, str]) -> str:
    if node.name not in cache:
        own = ",".join(f"{t.name.rpartition('.')[2]}:{t.shape}:{t.dtype}:{t.kind}" for t in node.tensors)
        kids = ",".join(f"{c.name.rpartition('.')[2]}={_signature(c, cache)}" for c in node.children.values())
        cache[node.name] = f"{node.type}({own}|{kids})"
    return cache[node.name]


def _runs(children: list[_Node], cache: dict[str, str]) -> list[list[_Node]]:
    """Split children into runs of consecutive integer names with identical structure."""
    runs: list[list[_Node]] = []
    for child in children:
        short = child.name.rpartition(".")[2]
        prev = runs[-1][-1] if runs else None
        if (
            prev is not None
            and is_index(short)
            and is_index(prev.name.rpartition(".")[2])
            and int(short) == int(prev.name.rpartition(".")[2]) + 1
            and _signature(child, cache) == _signature(prev, cache)
        ):
            runs[-1].append(child)
        else:
            runs.append([child])
    return runs


@dataclass(frozen=True)
class _View:
    module_known: bool
    aliases: dict[str, str]
    rows: dict[str, ModuleRow]
    depth: int | None
    pattern: str | None
    expand: bool


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


def _selected(node: _Node, pattern: str) -> bool:
    if _matches(node.name, pattern) or any(_matches(t.name, pattern) for t in node.tensors):
        return True
    return any(_selected(c, pattern) for c in node.children.values())


def _tensor_row(t: TensorInfo, aliases: dict[str, str]) -> TensorRow:
    return TensorRow(t.name, t.shape, t.dtype, t.nbytes, t.kind, t.requires_grad, t.persistent, aliases.get(t.name))


def _view(node: _Node, level: int, view: _View, cache: dict[str, str], inside_match: bool) -> ModuleNode:
    inside_match = inside_match or (view.pattern is not None and _matches(node.name, view.pattern))
    children = [c for c in node.children.values() if view.pattern is None or inside_match or _selected(c, view.pattern)]
    tensors = [t for t in node.tensors if view.pattern is None or inside_match or _matches(t.name, view.pattern)]
    row = view.rows[node.name]
    if view.depth is not None and level >= view.depth:
        return ModuleNode(row, (), (), hidden=len(children) + len(tensors))
    shown: list[ModuleNode] = []
    for run in ([[c] for c in children] if view.expand else _runs(children, cache)):
        first = _view(run[0], level + 1, view, cache, inside_match)
        if len(run) == 1:
            shown.append(first)
            continue
        merged = _unique(t for member in run for t in _subtree_tensors(member))
        shown.append(
            ModuleNode(
                first.row, first.tensors, first.children, repeat=len(run), last_name=run[-1].name,
                run_params=sum(t.numel for t in merged if _is_param(t, view.module_known)),
                run_bytes=sum(t.nbytes for t in merged), hidden=first.hidden,
            )
        )
    return ModuleNode(row, tuple(_tensor_row(t, view.aliases) for t in tensors), tuple(shown))


def _totals(tensors: list[TensorInfo], module_known: bool) -> tuple[Totals, tuple[DtypeTotal, ...]]:
    unique = _unique(tensors)
    params = [t for t in unique if _is_param(t, module_known)]
    buffers = [t for t in unique if t.kind == "buffer"]
    by_dtype: dict[str, list[int]] = {}
    for t in unique:
        acc = by_dtype.setdefault(t.dtype, [0, 0])
        acc[0] += t.numel
        acc[1] += t.nbytes
    known = module_known
    trainable = sum(t.numel for t in params if t.requires_grad) if known else None
    total_params = sum(t.numel for t in params)
    totals = Totals(
        params=total_params,
        trainable=trainable,
        frozen=total_params - trainable if trainable is not None else None,
        # A state dict knows its standard buffers by name (running_mean, ...): count them too.
        buffers=sum(t.numel for t in buffers) if known or buffers else None,
        persistent_buffers=sum(t.numel for t in buffers if t.persistent is not False) if known or buffers else None,
        non_persistent_buffers=sum(t.numel for t in buffers if t.persistent is False) if known or buffers else None,
        bytes=sum(t.nbytes for t in unique),
        tensors=len(tensors),
    )
    dtypes = tuple(DtypeTotal(d, e, b) for d, (e, b) in sorted(by_dtype.items(), key=lambda kv: -kv[1][1]))
    return totals, dtypes


def build_tree(source: Source, *, depth: int | None = None, pattern: str | None = None,
               expand: bool = False) -> TreeReport:
    """The TreeReport of a source: totals over everything; `depth`, `pattern` and `expand` shape the view."""
    module_known = source.modules is not None
    nodes: dict[str, _Node] = {}
    _ensure(nodes, "")
    for m in source.modules or ():
        node = _ensure(nodes, m.name)
        node.type, node.training = m.type, m.training
    for t in source.tensors:
        _ensure(nodes, _parent(t.name)).tensors.append(t)
    groups = tied_groups(source.tensors)
    aliases = {name: group[0] for group in groups for name in group[1:]}
    totals, by_dtype = _totals(source.tensors, module_known)
    rows = {name: _row(n, module_known) for name, n in nodes.items()}  # once: the list and the view share them
    flat_rows = [r for r in rows.values() if pattern is None or _matches(r.name, pattern)]
    tensor_rows = [_tensor_row(t, aliases) for t in source.tensors if pattern is None or _matches(t.name, pattern)]
    root = _view(nodes[""], 0, _View(module_known, aliases, rows, depth, pattern, expand), {}, False)
    return TreeReport(
        source=source.label, format=source.format, module_known=module_known,
        training=nodes[""].training, totals=totals, by_dtype=by_dtype, modules=tuple(flat_rows),
        tensors=tuple(tensor_rows), tied=tuple(tuple(g) for g in groups), root=root,
        state_dict_key=source.state_dict_key,
        other_entries=tuple((e.name, e.summary) for e in source.other_entries),
        metadata=tuple(sorted(source.metadata.items())), notes=tuple(source.notes), filter=pattern,
    )
