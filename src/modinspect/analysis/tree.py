"""The module tree of a Source: recursive counts with each storage once, tied names, totals.

Linear in the number of tensors and modules, and free of recursion (a name of 1,000 dotted parts is a
1,000-deep tree): each tensor is added to its own module once, and the sums flow up in one pass from the
leaves. Only storages held by two or more names (tied weights) need more: each holder walks up to the
first ancestor that already counts that storage, so a subtree still counts it once.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from modinspect.analysis.quant import QuantScan, scan_quantization
from modinspect.errors import CorruptFileError
from modinspect.gcpause import paused_gc
from modinspect.names import is_index
from modinspect.reports import (
    DtypeTotal,
    ModuleNode,
    ModuleRow,
    QuantLayer,
    TensorRow,
    Totals,
    TreeReport,
)
from modinspect.sources.base import ModuleInfo, Source, TensorInfo, tied_groups

# (params, bytes, trainable) that one storage adds to every module whose subtree holds it
_Counts = tuple[int, int, int]


class _Node:
    """A module of the tree being built; `params`/`bytes`/`trainable` start as its own tensors' sums."""

    __slots__ = (
        "bytes",
        "children",
        "name",
        "params",
        "parent",
        "selected",
        "shared",
        "short",
        "signature",
        "tensors",
        "trainable",
        "training",
        "type",
    )

    def __init__(self, name: str, parent: _Node | None) -> None:
        self.name = name
        self.short = name.rpartition(".")[2]
        self.parent = parent
        self.type: str | None = None
        self.training: bool | None = None
        self.tensors: list[int] = []  # indices into source.tensors
        self.children: list[_Node] = []
        self.params = self.bytes = self.trainable = 0
        self.shared: dict[str, _Counts] | None = (
            None  # shared storages under this node, each counted once
        )
        self.selected = False
        self.signature = -1


# Every module keeps its full dotted name (the report's rows and --json give it), so a name of d parts and
# n characters costs about d * n / 2 characters: 1,000 parts of 1,000 characters would be 500 MB of names
# (tree --json took 27 s and 3 GB). The names of all modules together are bounded instead.
MAX_MODULE_NAME_CHARS = 1 << 26


class _Tree:
    """Every module by name, in creation order (each parent before its children)."""

    def __init__(self, label: str = "the source") -> None:
        self.root = _Node("", None)
        self.nodes: dict[str, _Node] = {"": self.root}
        self.label = label
        self.name_chars = 0  # of every module name created: what MAX_MODULE_NAME_CHARS bounds

    def ensure(self, name: str) -> _Node:
        node = self.nodes.get(name)
        if node is not None:
            return node
        missing = []
        while name not in self.nodes:
            missing.append(name)
            self.name_chars += len(name)
            if self.name_chars > MAX_MODULE_NAME_CHARS:
                raise CorruptFileError(
                    f"{self.label} nests modules so deep (a module name of {missing[0].count('.') + 1:,} dotted parts "
                    f"and {len(missing[0]):,} characters) that all their names would add up to more than "
                    f"{MAX_MODULE_NAME_CHARS:,} characters"
                )
            name = name.rpartition(".")[0]
        parent = self.nodes[name]
        for name in reversed(missing):
            node = _Node(name, parent)
            parent.children.append(node)
            self.nodes[name] = parent = node
        return parent

    def release(self) -> None:
        """Break the parent links, so the nodes go by reference counting alone."""
        for node in self.nodes.values():
            node.parent = None


def _storage_id(t: TensorInfo) -> str:
    return t.storage if t.storage is not None else f"name:{t.name}"


def _is_param(t: TensorInfo, module_known: bool) -> bool:
    # In a bare state dict kinds are unknown: every tensor counts as a parameter.
    return t.kind == "parameter" or (t.kind == "unknown" and not module_known)


def _counts(t: TensorInfo, module_known: bool, logical: dict[str, tuple[int, ...]]) -> _Counts:
    if not _is_param(t, module_known):
        return 0, t.nbytes, 0
    numel = math.prod(logical.get(t.name, t.shape))
    return numel, t.nbytes, numel if t.requires_grad else 0


@dataclass
class _Sums:
    """Totals over the whole source, each storage once (its first name in source order)."""

    params: int = 0
    trainable: int = 0
    buffers: int = 0
    persistent: int = 0
    buffer_tensors: int = 0
    bytes: int = 0


def _grow(
    tree: _Tree,
    tensors: list[TensorInfo],
    module_known: bool,
    by_dtype: dict[str, list[int]],
    sums: _Sums,
    logical: dict[str, tuple[int, ...]],
) -> dict[str, list[int]]:
    """Attach each tensor to its module and add its counts there; returns the storages two or more hold.

    The hot loop of `tree`: one pass, locals only, no call per tensor but math.prod.
    """
    get, ensure, prod = tree.nodes.get, tree.ensure, math.prod
    first: dict[str, int] = {}
    claim = first.setdefault
    shared: dict[str, list[int]] = {}
    params = trainable = buffers = persistent = buffer_tensors = total_bytes = 0
    for i, t in enumerate(tensors):
        name = t.name
        parent = name.rpartition(".")[0]
        node = get(parent)
        if node is None:
            node = ensure(parent)
        node.tensors.append(i)
        sid = t.storage
        if sid is None:
            sid = "name:" + name
        if claim(sid, i) != i:
            shared.setdefault(sid, [first[sid]]).append(i)
            continue
        numel = stored = prod(t.shape)
        if (
            logical and name in logical
        ):  # a packed quantized weight counts the parameters it stands for
            numel = prod(logical[name])
        nbytes = t.nbytes
        kind = t.kind
        node.bytes += nbytes
        total_bytes += nbytes
        acc = by_dtype.get(t.dtype)
        if acc is None:
            by_dtype[t.dtype] = [stored, nbytes]
        else:
            acc[0] += stored
            acc[1] += nbytes
        if kind == "parameter" or (kind == "unknown" and not module_known):
            node.params += numel
            params += numel
            if t.requires_grad:
                node.trainable += numel
                trainable += numel
        elif kind == "buffer":
            buffers += numel
            buffer_tensors += 1
            if t.persistent is not False:
                persistent += numel
    sums.params, sums.trainable, sums.buffers, sums.persistent, sums.buffer_tensors, sums.bytes = (
        params,
        trainable,
        buffers,
        persistent,
        buffer_tensors,
        total_bytes,
    )
    return shared


def _count_shared(
    tree: _Tree,
    tensors: list[TensorInfo],
    shared: dict[str, list[int]],
    module_known: bool,
    logical: dict[str, tuple[int, ...]],
) -> None:
    """Count each shared storage once in every module above one of its holders.

    A subtree counts a storage as the first of its holders in depth-first order (a module's own tensors,
    then its children's), so the holders walk up in that order, each stopping where an earlier one passed.
    """
    nodes = tree.nodes
    for holders in shared.values():  # the first holder was counted as if alone: take it back
        t = tensors[holders[0]]
        node = nodes[t.name.rpartition(".")[0]]
        params, nbytes, trainable = _counts(t, module_known, logical)
        node.params -= params
        node.bytes -= nbytes
        node.trainable -= trainable
    stack = [tree.root]
    while stack:
        node = stack.pop()
        for i in node.tensors:
            t = tensors[i]
            sid = _storage_id(t)
            if sid not in shared:
                continue
            counts = _counts(t, module_known, logical)
            up: _Node | None = node
            while up is not None:
                if up.shared is None:
                    up.shared = {}
                elif sid in up.shared:
                    break
                up.shared[sid] = counts
                up = up.parent
        stack.extend(reversed(node.children))


def _sum_up(tree: _Tree, pattern: str | None, tensors: list[TensorInfo]) -> None:
    """Children's sums into their parents, leaves first; with a pattern, which subtrees hold a match."""
    for node in reversed(tree.nodes.values()):  # every child was created after its parent
        if pattern is not None and not node.selected:
            node.selected = _matches(node.name, pattern) or any(
                _matches(tensors[i].name, pattern) for i in node.tensors
            )
        parent = node.parent
        if parent is not None:
            parent.params += node.params
            parent.bytes += node.bytes
            parent.trainable += node.trainable
            parent.selected = parent.selected or node.selected


def _row(node: _Node, module_known: bool, layer: QuantLayer | None = None) -> ModuleRow:
    params, nbytes, trainable = node.params, node.bytes, node.trainable
    if node.shared:
        for p, b, tr in node.shared.values():
            params += p
            nbytes += b
            trainable += tr
    parent = node.parent.training if node.parent is not None else None
    if layer is not None:
        return ModuleRow(
            node.name,
            node.type,
            params,
            nbytes,
            trainable if module_known else None,
            node.training,
            parent,
            layer.scheme,
            layer.bits_per_weight,
        )
    return ModuleRow(
        node.name,
        node.type,
        params,
        nbytes,
        trainable if module_known else None,
        node.training,
        parent,
    )


class _Signatures:
    """An integer per module that equal structures share: type, mode, own tensors (name, shape, dtype, kind), children.

    Computed for every module at the first question, leaves first (each child was created after its
    parent), each module interning a tuple of its own parts and its children's integers: linear.
    """

    def __init__(self, tree: _Tree, tensors: list[TensorInfo]) -> None:
        self.tree, self.tensors = tree, tensors
        self.done = False

    def of(self, node: _Node) -> int:
        if not self.done:
            self.done = True
            tensors = self.tensors
            table: dict[object, int] = {}
            for n in reversed(self.tree.nodes.values()):
                own = tuple(
                    [
                        (t.name.rpartition(".")[2], t.shape, t.dtype, t.kind)
                        for t in [tensors[i] for i in n.tensors]
                    ]
                )
                key = (n.type, n.training, own, tuple([(c.short, c.signature) for c in n.children]))
                n.signature = table.setdefault(key, len(table))
        return node.signature


def _runs(children: list[_Node], signatures: _Signatures) -> list[list[_Node]]:
    """Split children into runs of consecutive integer names with identical structure."""
    runs: list[list[_Node]] = []
    prev_index: int | None = None
    for child in children:
        index = int(child.short) if is_index(child.short) else None
        if (
            runs
            and index is not None
            and prev_index is not None
            and index == prev_index + 1
            and signatures.of(child) == signatures.of(runs[-1][-1])
        ):
            runs[-1].append(child)
        else:
            runs.append([child])
        prev_index = index
    return runs


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


@dataclass(frozen=True)
class _View:
    module_known: bool
    rows: dict[str, ModuleRow]
    tensor_rows: list[TensorRow]
    tensors: list[TensorInfo]
    depth: int | None
    pattern: str | None
    expand: bool


class _Frame:
    """One module of the view being built, with the runs of children still to build."""

    __slots__ = ("inside", "level", "next", "node", "runs", "shown", "tensors")

    def __init__(
        self, node: _Node, level: int, inside: bool, tensors: list[int], runs: list[list[_Node]]
    ) -> None:
        self.node, self.level, self.inside, self.tensors, self.runs = (
            node,
            level,
            inside,
            tensors,
            runs,
        )
        self.next = 0
        self.shown: list[ModuleNode] = []


def _enter(
    node: _Node, level: int, inside: bool, view: _View, signatures: _Signatures
) -> _Frame | ModuleNode:
    """The frame that builds `node`'s view, or the finished node when --depth cuts it here."""
    pattern = view.pattern
    inside = inside or (pattern is not None and _matches(node.name, pattern))
    children = (
        node.children if pattern is None or inside else [c for c in node.children if c.selected]
    )
    tensors = node.tensors
    if not (pattern is None or inside):
        tensors = [i for i in tensors if _matches(view.tensors[i].name, pattern)]
    if view.depth is not None and level >= view.depth:
        return ModuleNode(view.rows[node.name], (), (), hidden=len(children) + len(tensors))
    runs = [[c] for c in children] if view.expand else _runs(children, signatures)
    return _Frame(node, level, inside, tensors, runs)


def _collapse(run: list[_Node], first: ModuleNode, view: _View) -> ModuleNode:
    """A run of identical blocks as one node: the first's view, the whole run's counts (each storage once)."""
    if len(run) == 1:
        return first
    members = [view.rows[m.name] for m in run]
    params, nbytes = sum(r.params for r in members), sum(r.bytes for r in members)
    seen: set[str] = set()
    for member in run:  # a storage two members share counts once, as the earlier member's
        for sid, (p, b, _) in (member.shared or {}).items():
            if sid in seen:
                params, nbytes = params - p, nbytes - b
            seen.add(sid)
    return ModuleNode(
        first.row,
        first.tensors,
        first.children,
        repeat=len(run),
        last_name=run[-1].name,
        run_params=params,
        run_bytes=nbytes,
        hidden=first.hidden,
    )


def _view(tree: _Tree, view: _View) -> ModuleNode:
    """The displayed tree, built depth-first with an explicit stack."""
    signatures = _Signatures(tree, view.tensors)
    top = _enter(tree.root, 0, False, view, signatures)
    if isinstance(top, ModuleNode):
        return top
    stack = [top]
    while True:
        frame = stack[-1]
        if frame.next < len(frame.runs):
            entered = _enter(
                frame.runs[frame.next][0], frame.level + 1, frame.inside, view, signatures
            )
            if isinstance(entered, _Frame):
                stack.append(entered)
                continue
            built = entered
        else:
            stack.pop()
            built = ModuleNode(
                view.rows[frame.node.name],
                tuple(view.tensor_rows[i] for i in frame.tensors),
                tuple(frame.shown),
            )
            if not stack:
                return built
            frame = stack[-1]
        frame.shown.append(_collapse(frame.runs[frame.next], built, view))
        frame.next += 1


def _tensor_rows(
    tensors: list[TensorInfo], aliases: dict[str, str], quant: QuantScan
) -> list[TensorRow]:
    if quant:
        schemes, logical = {**quant.aux, **quant.schemes}, quant.logical
        return [
            TensorRow(
                t.name,
                t.shape,
                t.dtype,
                t.nbytes,
                t.kind,
                t.requires_grad,
                t.persistent,
                aliases.get(t.name),
                schemes.get(t.name),
                logical.get(t.name),
            )
            for t in tensors
        ]
    if aliases:
        return [
            TensorRow(
                t.name,
                t.shape,
                t.dtype,
                t.nbytes,
                t.kind,
                t.requires_grad,
                t.persistent,
                aliases.get(t.name),
            )
            for t in tensors
        ]
    return [
        TensorRow(t.name, t.shape, t.dtype, t.nbytes, t.kind, t.requires_grad, t.persistent, None)
        for t in tensors
    ]


def _totals(
    sums: _Sums, count: int, by_dtype: dict[str, list[int]], module_known: bool
) -> tuple[Totals, tuple[DtypeTotal, ...]]:
    known = module_known
    counted = known or sums.buffer_tensors > 0
    trainable = sums.trainable if known else None
    totals = Totals(
        params=sums.params,
        trainable=trainable,
        frozen=sums.params - trainable if trainable is not None else None,
        # A state dict knows its standard buffers by name (running_mean, ...): count them too.
        buffers=sums.buffers if counted else None,
        persistent_buffers=sums.persistent if counted else None,
        non_persistent_buffers=sums.buffers - sums.persistent if counted else None,
        bytes=sums.bytes,
        tensors=count,
    )
    dtypes = tuple(
        DtypeTotal(d, e, b) for d, (e, b) in sorted(by_dtype.items(), key=lambda kv: -kv[1][1])
    )
    return totals, dtypes


def _add_modules(tree: _Tree, modules: list[ModuleInfo]) -> None:
    for m in modules:
        node = tree.ensure(m.name)
        node.type, node.training = m.type, m.training


def build_tree(
    source: Source, *, depth: int | None = None, pattern: str | None = None, expand: bool = False
) -> TreeReport:
    """The TreeReport of a source: modules, tensors and totals; what `modinspect tree` shows.

    Totals count every storage once (tied weights once), whatever `depth` and `pattern` hide.

    Args:
        source: an open Source (from `open_source`).
        depth: show modules down to this depth (None: all).
        pattern: show only modules and tensors whose name matches this glob.
        expand: list every block of a run of identical blocks instead of folding them (`--expand`).

    Returns:
        A TreeReport: `totals`, `by_dtype`, `modules` (flat), `tensors`, `tied`, `root` (the displayed tree).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> report = modinspect.build_tree(modinspect.open_source(model))
        >>> report.totals.params, [m.name for m in report.modules]
        (58, ['', '0', '1', '2'])
    """
    with paused_gc():
        return _build(source, depth, pattern, expand)


def _build(source: Source, depth: int | None, pattern: str | None, expand: bool) -> TreeReport:
    module_known = source.modules is not None
    quant = scan_quantization(source)
    tensors = _marked(source.tensors, quant) if quant else source.tensors
    tree = _Tree(source.label)
    _add_modules(tree, source.modules or [])
    by_dtype: dict[str, list[int]] = {}
    sums = _Sums()
    shared = _grow(tree, tensors, module_known, by_dtype, sums, quant.logical)
    if shared:
        _count_shared(tree, tensors, shared, module_known, quant.logical)
    _sum_up(tree, pattern, tensors)
    groups = tied_groups(tensors) if shared else []
    aliases = {name: group[0] for group in groups for name in group[1:]}
    totals, dtypes = _totals(sums, len(tensors), by_dtype, module_known)
    layers = {layer.module: layer for layer in quant.layers}
    rows = {
        name: _row(n, module_known, layers.get(name)) for name, n in tree.nodes.items()
    }  # the list and view share them
    tensor_rows = _tensor_rows(tensors, aliases, quant)
    flat_rows = [r for r in rows.values() if pattern is None or _matches(r.name, pattern)]
    listed = (
        tensor_rows if pattern is None else [r for r in tensor_rows if _matches(r.name, pattern)]
    )
    root = _view(tree, _View(module_known, rows, tensor_rows, tensors, depth, pattern, expand))
    tree.release()
    return TreeReport(
        source=source.label,
        format=source.format,
        module_known=module_known,
        training=tree.root.training,
        totals=totals,
        by_dtype=dtypes,
        modules=tuple(flat_rows),
        tensors=tuple(listed),
        tied=tuple(tuple(g) for g in groups),
        root=root,
        state_dict_key=source.state_dict_key,
        other_entries=tuple((e.name, e.summary) for e in source.other_entries),
        metadata=tuple(sorted(source.metadata.items())),
        notes=tuple(source.notes) + _quant_note(quant),
        filter=pattern,
        would_call=tuple(source.would_call),
        by_scheme=_by_scheme(quant),
    )


def _marked(tensors: list[TensorInfo], quant: QuantScan) -> list[TensorInfo]:
    """The tensors with each auxiliary one's kind 'quant-aux' and each packed weight a parameter."""
    aux, packed = quant.aux, quant.logical
    out = []
    for t in tensors:
        if t.name in aux:
            t = TensorInfo(t.name, t.shape, t.dtype, t.nbytes, "quant-aux", t.storage, None, None)
        elif t.name in packed and t.kind != "parameter":
            t = TensorInfo(
                t.name, t.shape, t.dtype, t.nbytes, "parameter", t.storage, t.requires_grad, None
            )
        out.append(t)
    return out


def _quant_note(quant: QuantScan) -> tuple[str, ...]:
    if not quant:
        return ()
    schemes = ", ".join(sorted({layer.scheme for layer in quant.layers}))
    return (
        f"{len(quant.layers):,} quantized layers ({schemes}): each packed weight counts the parameters of the "
        f"float weight it stands for; their {len(quant.aux):,} auxiliary tensors (scales, zeros, absmax...) are "
        "stored bytes, not parameters",
    )


def _by_scheme(quant: QuantScan) -> tuple[DtypeTotal, ...]:
    sums: dict[str, list[int]] = {}
    for layer in quant.layers:
        acc = sums.setdefault(layer.scheme, [0, 0])
        acc[0] += layer.params
        acc[1] += layer.bytes
    return tuple(
        DtypeTotal(s, e, b) for s, (e, b) in sorted(sums.items(), key=lambda kv: -kv[1][1])
    )
