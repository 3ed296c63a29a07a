"""`tree`'s view: the module tree (rich's Tree, or the same text written directly), then the totals."""

from __future__ import annotations

from collections.abc import Iterator

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from modinspect.render.console.common import Trimmed
from modinspect.render.console.theme import Themed
from modinspect.render.text import (
    bpw_text,
    human_bytes,
    human_count,
    shape_text,
    visible_report,
    wrap_words,
)
from modinspect.reports import ModuleNode, ModuleShapes, TensorRow, TreeReport


def _tensor_pieces(t: TensorRow) -> list[tuple[str, str]]:
    """A tensor's line as (text, style) pieces: rich's label and the plain writer's line are the same text."""
    pieces = [
        (t.short, "mi.name"),
        (f"  {shape_text(t.shape)}", "mi.shape"),
        (f"  {t.dtype}", "mi.dtype"),
    ]
    if (
        t.logical_shape is not None
    ):  # a packed quantized weight: the float shape it stands for, and its scheme
        if t.logical_shape != t.shape:
            pieces.append((f"  = {shape_text(t.logical_shape)}", "mi.shape"))
        if t.scheme != t.dtype:  # torch.ao's qint8 says it once
            pieces.append((f"  {t.scheme}", "mi.dtype"))
    bpw = bpw_text(t.bits_per_weight)
    if bpw is not None:
        pieces.append((f"  {bpw}", "mi.dtype"))
    if t.alias_of is not None:
        pieces += [(f"  = {t.alias_of}", "mi.tied"), ("  (tied, counted once)", "mi.muted")]
        return pieces
    pieces.append((f"  {human_bytes(t.nbytes)}", "mi.muted"))
    if t.kind == "buffer":
        pieces.append(
            ("  buffer" if t.persistent is not False else "  buffer, non-persistent", "mi.buffer")
        )
    elif t.kind == "quant-aux":
        pieces.append((f"  quant-aux ({t.scheme})" if t.scheme else "  quant-aux", "mi.buffer"))
    elif t.requires_grad is False:
        pieces.append(("  frozen", "mi.frozen"))
    return pieces


def _tensor_label(t: TensorRow) -> Text:
    return Text.assemble(*_tensor_pieces(t))


def _module_label(node: ModuleNode, report: TreeReport, is_root: bool, room: int = 10**6) -> Text:
    """A module's line; where it would be wider than `room`, its hyperparameters move to a line of their own."""
    row = node.row
    label = Text()
    if is_root:
        label.append(row.type or "(state dict)", style="mi.root")
        if not report.module_known:
            label.append("  module classes unknown: built from key names", style="mi.muted")
    else:
        name = node.short
        if node.repeat > 1:
            # "h.0 … h.11": the run's own names, relative to the parent shown above it.
            parent = node.row.name.rpartition(".")[0].rpartition(".")[2]
            last = (node.last_name or "").rpartition(".")[2]
            name = (
                f"{parent}.{node.short} … {parent}.{last}" if parent else f"{node.short} … {last}"
            )
        label.append(name, style="mi.name")
        if node.repeat > 1:
            label.append(f"  ×{node.repeat}", style="mi.repeat")
        if row.type:
            label.append(f"  {row.type}", style="mi.type")
    hyper = dict(report.extra_reprs).get(row.name) if report.extra_reprs else None
    hyper_at = len(label)
    if node.repeat > 1:
        label.append(
            f"  {human_count(row.params)} params each, {human_count(node.run_params)} in all",
            style="mi.count",
        )
        label.append(f"  {human_bytes(node.run_bytes)}", style="mi.muted")
    elif row.params or row.bytes:
        label.append(f"  {human_count(row.params)} params", style="mi.count")
        label.append(f"  {human_bytes(row.bytes)}", style="mi.muted")
    _place_hyper(label, hyper, hyper_at, room)
    if row.scheme is not None:
        bpw = f" · {row.bits_per_weight:.3g} bpw" if row.bits_per_weight is not None else ""
        label.append(f"  {row.scheme}{bpw}", style="mi.dtype")
    if row.trainable is not None and row.params and row.trainable == 0:
        label.append("  frozen", style="mi.frozen")
    elif row.trainable is not None and 0 < row.trainable < row.params:
        label.append(f"  {human_count(row.params - row.trainable)} frozen", style="mi.frozen")
    if (
        row.training is not None
        and row.parent_training is not None
        and row.training != row.parent_training
    ):
        label.append("  train" if row.training else "  eval", style="mi.mode")
    if report.shapes is not None:
        _shapes_cells(label, _shapes_of(report).get(row.name), node.repeat > 1)
    if node.hidden:
        label.append(f"  (+{node.hidden} below --depth)", style="mi.muted")
    return label


def _place_hyper(label: Text, hyper: str | None, at: int, room: int) -> None:
    """'Conv2d(3, 8, …)' in the line when it fits `room`; else '(3, 8, …)' on the next line, the counts kept whole."""
    if hyper is None:
        return
    inline = Text(f"({hyper})", style="mi.type")
    if cell_len(label.plain) + cell_len(inline.plain) <= room:
        head, tail = label[:at], label[at:]
        label.truncate(0)
        label.append_text(head)
        label.append_text(inline)
        label.append_text(tail)
        return
    label.append_text(Text(f"\n({hyper})", style="mi.type"))


def _shapes_of(report: TreeReport) -> dict[str, ModuleShapes]:
    assert report.shapes is not None
    return {m.name: m for m in report.shapes.modules}


def _shapes_cells(label: Text, m: ModuleShapes | None, each: bool) -> None:
    """A second line, '→ [1, 8, 16, 16]  111K MACs  out 8.0 KiB  saved 1.5 KiB', for a module the forward ran."""
    if m is not None and not m.calls and m.type in ("ModuleList", "ModuleDict"):
        return  # containers are never called: their members are
    if m is None or not m.calls:
        label.append("\nnot called", style="mi.muted")
        return
    shapes = [shape_text(s) for s in m.output_shapes[:3]]
    if len(m.output_shapes) > 3:
        shapes.append(f"+{len(m.output_shapes) - 3} more")
    label.append(f"\n→ {', '.join(shapes) or 'no tensors'}", style="mi.shape")
    suffix = " each" if each else ""
    if m.calls > 1:
        label.append(f"  {m.calls} calls", style="mi.calls")
    if m.flops:
        label.append(f"  {human_count(m.macs)} MACs{suffix}", style="mi.compute")
    label.append(f"  out {human_bytes(m.output_bytes)}", style="mi.muted")
    if m.saved_bytes:
        label.append(f"  saved {human_bytes(m.saved_bytes)}", style="mi.muted")


def _add(tree: Tree, node: ModuleNode, report: TreeReport, room: int) -> None:
    # An explicit stack, not recursion: a name of 1,000 dotted parts is a tree 1,000 deep.
    stack = [(tree, node, room)]
    while stack:
        branch, at, space = stack.pop()
        for t in at.tensors:
            branch.add(_tensor_label(t))
        added = [
            (branch.add(_module_label(child, report, False, space - 4)), child, space - 4)
            for child in at.children
        ]
        stack.extend(reversed(added))


def tree_renderable(report: TreeReport, width: int = 200) -> RenderableType:
    """The module tree followed by the totals table.

    A label wider than `width` puts its hyperparameters on a line of their own; what is still too wide
    wraps at spaces (rich), never inside a number.
    """
    report = visible_report(report)
    root = Tree(_module_label(report.root, report, True, width), guide_style="mi.guide")
    _add(root, report.root, report, width)
    return Themed(Trimmed(Group(_header(report), root, Text(""), totals_table(report, width))))


GUIDES = ("    ", "│   ", "├── ", "└── ")  # rich's Tree guides: space, continue, fork, end


def plain_tree_lines(report: TreeReport, width: int) -> list[str] | None:
    """The tree's lines exactly as rich renders them without colour, or None where only rich can.

    Rich lays out every label (about 0.15 ms a row): 100k tensors take 15 s. Without styles a tree is
    its guides and its labels' text, which this writes directly. It gives up (None) where rich would
    change the text: a line too wide for its column (rich wraps it) or a character that is not printable
    (rich strips control codes, expands tabs).
    """
    space, cont, fork, end = GUIDES
    lines: list[str] = []

    def emit(prefix: str, more: str, text: str, room: int) -> bool:
        first = True
        for line in text.split("\n"):
            if not line.isprintable() or (
                len(line) > room if line.isascii() else cell_len(line) > room
            ):
                return False
            lines.append((prefix if first else more) + line.rstrip())
            first = False
        return True

    if not emit("", "", _module_label(report.root, report, True, width).plain, width):
        return None
    # Depth first with an explicit stack, as _add: per open branch its numbered items, how many, its guides
    # and the room its labels have.
    stack: list[tuple[Iterator[tuple[int, TensorRow | ModuleNode]], int, str, int]] = []

    def push(node: ModuleNode, guides: str, room: int) -> None:
        items: list[TensorRow | ModuleNode] = [*node.tensors, *node.children]
        stack.append((enumerate(items, 1), len(items), guides, room - 4))

    push(report.root, "", width)
    while stack:
        items, count, guides, room = stack[-1]
        numbered = next(items, None)
        if numbered is None:
            stack.pop()
            continue
        i, item = numbered
        last = i == count
        if isinstance(item, ModuleNode):
            text = _module_label(item, report, False, room).plain
        else:
            text = "".join(piece for piece, _ in _tensor_pieces(item))
        if not emit(
            guides + (end if last else fork), guides + (space if last else cont), text, room
        ):
            return None
        if isinstance(item, ModuleNode) and (item.tensors or item.children):
            push(item, guides + (space if last else cont), room)
    return lines


def print_tree(out: Console, report: TreeReport) -> None:
    """`tree`'s view on `out`: rich's Tree on a styled console, the same text written directly on a plain one."""
    report = visible_report(report)
    width = out.width
    lines = None
    if out.color_system is None and not out.record and not out.options.ascii_only:
        lines = plain_tree_lines(report, width)
    if lines is None:
        out.print(tree_renderable(report, width))
        return
    out.print(Themed(Trimmed(_header(report))))
    out.file.write("\n".join(lines) + "\n")
    out.print(Themed(Trimmed(Group(Text(""), totals_table(report, width)))))


def _header(report: TreeReport) -> Text:
    text = Text()
    text.append(report.source, style="mi.source")
    text.append(f"  ({report.format}", style="mi.muted")
    if report.state_dict_key:
        text.append(f", state dict under '{report.state_dict_key}'", style="mi.muted")
    if report.training is not None:
        text.append(f", {'training' if report.training else 'eval'} mode", style="mi.muted")
    text.append(")", style="mi.muted")
    if report.filter:
        text.append(f"  filter: {report.filter}", style="mi.filter")
    return text


def totals_table(report: TreeReport, width: int = 200) -> Text:
    """Aligned label / value / detail lines, without the trailing padding a rich Table adds in a pipe."""
    t = report.totals
    rows: list[tuple[str, str, str]] = []
    kind = "Parameters" if report.module_known else "Tensor elements"
    detail = ""
    if t.trainable is not None and t.frozen is not None:
        detail = f"trainable {t.trainable:,} · frozen {t.frozen:,}"
    elif not report.module_known:
        detail = "kinds unknown: parameters and buffers counted together"
        if t.buffers:
            detail = "kinds unknown, but for the standard buffers below"
    rows.append((kind, f"{t.params:,}", detail))
    if t.buffers is not None:
        rows.append(
            (
                "Buffers",
                f"{t.buffers:,}",
                f"persistent {t.persistent_buffers:,} · non-persistent {t.non_persistent_buffers:,}",
            )
        )
    rows.append(("Size", human_bytes(t.bytes), f"{t.bytes:,} bytes in {t.tensors:,} tensors"))
    rows += [
        (
            "By dtype" if i == 0 else "",
            f"{d.elements:,}",
            f"{d.dtype} · {human_bytes(d.bytes)}"
            + (f" · {bpw}" if (bpw := bpw_text(d.bits_per_weight)) else ""),
        )
        for i, d in enumerate(report.by_dtype)
    ]
    rows += [
        (
            "Quantized" if i == 0 else "",
            f"{d.elements:,}",
            f"{d.dtype} · {human_bytes(d.bytes)}"
            + (f" · {d.bits_per_weight:.3g} bpw" if d.bits_per_weight else "")
            + (" (auxiliary tensors included)" if i == len(report.by_scheme) - 1 else ""),
        )
        for i, d in enumerate(report.by_scheme)
    ]
    rows += [
        ("Tied" if i == 0 else "", "", " = ".join(reversed(g))) for i, g in enumerate(report.tied)
    ]
    rows += _shapes_rows(report)
    rows += [
        ("Other entries" if i == 0 else "", name, summary)
        for i, (name, summary) in enumerate(report.other_entries)
    ]
    aliases = _alias_names(report)
    metadata = [(k, v) for k, v in report.metadata if k not in aliases]
    rows += [("Metadata" if i == 0 else "", k, v[:80]) for i, (k, v) in enumerate(metadata)]
    rows += [("Notes" if i == 0 else "", "", note) for i, note in enumerate(report.notes)]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    text = Text()
    for i, (label, value, detail) in enumerate(rows):
        if i:
            text.append("\n")
        text.append(label.ljust(w0), style="mi.label")
        text.append("  " + value.rjust(w1))
        if detail:  # a long detail wraps under itself, a number never parted from its unit
            lines = wrap_words(detail, max(width - w0 - w1 - 4, 20))
            text.append("  " + ("\n" + " " * (w0 + w1 + 4)).join(lines), style="mi.muted")
        elif not value:
            text.rstrip()
    text.rstrip()
    return text


def _shapes_rows(report: TreeReport) -> list[tuple[str, str, str]]:
    if report.shapes is None:
        return []
    t = report.shapes.totals
    mode = "training" if report.shapes.training else "eval"
    return [
        ("Input", human_bytes(t.input_bytes), report.shapes.inputs),
        (
            "MACs",
            human_count(t.macs),
            f"{t.macs:,} multiply-adds = {t.flops:,} FLOPs / 2, one forward ({mode} mode)",
        ),
        (
            "Forward",
            human_bytes(t.forward_bytes),
            f"{t.forward_bytes:,} bytes of leaf-module outputs",
        ),
        (
            "Backward",
            human_bytes(t.backward_bytes),
            f"{t.backward_bytes:,} bytes saved for backward, each storage once",
        ),
        (
            "Param bytes",
            human_bytes(t.param_bytes),
            f"{t.param_bytes:,} bytes in the stored dtypes, tied once; buffers {human_bytes(t.buffer_bytes)}",
        ),
    ]


def _alias_names(report: TreeReport) -> set[str]:
    return {name for group in report.tied for name in group}
