"""Reports -> rich renderables. The only module in modinspect that imports rich."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from modinspect.analysis.keymap import collapse_indices
from modinspect.analysis.stats_math import collapse_names
from modinspect.render.text import (
    bad_step_text,
    human_bytes,
    human_count,
    num,
    percent,
    series_sparkline,
    shape_text,
    sparkline,
)
from modinspect.report import (
    DiffReport,
    LoadReport,
    ModuleNode,
    ModuleShapes,
    NonfiniteOrigin,
    RunReport,
    StatsReport,
    TensorRow,
    TreeReport,
)


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """A console that colours only terminals, honours NO_COLOR, and does not wrap piped output at 80."""
    stream = file or sys.stdout
    if width is None and not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def progress(message: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on stderr while slow work runs (building a model, loading weights, running batches).

    Only on a terminal: pipes and CI logs stay clean.
    """
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    return Console(file=sys.stderr).status(message, spinner="dots")


def progress_bar(total: int, description: str) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """A byte-counting progress bar on stderr, on a terminal only; yields an advance(nbytes) callable."""
    return _ProgressBar(total, description)


class _ProgressBar:
    def __init__(self, total: int, description: str) -> None:
        self.total, self.description = total, description
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda _n: None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def batch_progress(total: int, device: str) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """`stats --batches N`: a batch counter with an ETA on stderr, on a terminal only; yields advance(batches)."""
    return _BatchProgress(total, device)


class _BatchProgress:
    def __init__(self, total: int, device: str) -> None:
        self.total, self.device = total, device
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda _n: None
        self.progress = Progress(
            TextColumn(f"running batches on {self.device}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=sys.stderr, force_terminal=True), transient=True,
        )
        self.progress.start()
        task = self.progress.add_task("batches", total=self.total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _tensor_label(t: TensorRow) -> Text:
    label = Text()
    label.append(t.short, style="bold")
    label.append(f"  {shape_text(t.shape)}", style="cyan")
    label.append(f"  {t.dtype}", style="magenta")
    if t.alias_of is not None:
        label.append(f"  = {t.alias_of}", style="yellow")
        label.append("  (tied, counted once)", style="dim")
        return label
    label.append(f"  {human_bytes(t.nbytes)}", style="dim")
    if t.kind == "buffer":
        label.append("  buffer" if t.persistent is not False else "  buffer, non-persistent", style="blue")
    elif t.requires_grad is False:
        label.append("  frozen", style="red")
    return label


def _module_label(node: ModuleNode, report: TreeReport, is_root: bool) -> Text:
    row = node.row
    label = Text()
    if is_root:
        label.append(row.type or "(state dict)", style="bold green")
        if not report.module_known:
            label.append("  module classes unknown: built from key names", style="dim")
    else:
        name = node.short
        if node.repeat > 1:
            # "h.0 … h.11": the run's own names, relative to the parent shown above it.
            parent = node.row.name.rpartition(".")[0].rpartition(".")[2]
            last = (node.last_name or "").rpartition(".")[2]
            name = f"{parent}.{node.short} … {parent}.{last}" if parent else f"{node.short} … {last}"
        label.append(name, style="bold")
        if node.repeat > 1:
            label.append(f"  ×{node.repeat}", style="bold yellow")
        if row.type:
            label.append(f"  {row.type}", style="green")
    hyper = dict(report.extra_reprs).get(row.name) if report.extra_reprs else None
    if hyper is not None:
        label.append(f"({hyper})", style="green")
    if node.repeat > 1:
        label.append(f"  {human_count(row.params)} params each, {human_count(node.run_params)} in all", style="cyan")
        label.append(f"  {human_bytes(node.run_bytes)}", style="dim")
    elif row.params or row.bytes:
        label.append(f"  {human_count(row.params)} params", style="cyan")
        label.append(f"  {human_bytes(row.bytes)}", style="dim")
    if row.trainable is not None and row.params and row.trainable == 0:
        label.append("  frozen", style="red")
    elif row.trainable is not None and 0 < row.trainable < row.params:
        label.append(f"  {human_count(row.params - row.trainable)} frozen", style="red")
    parent_training = report.training
    if row.training is not None and not is_root and row.training != parent_training:
        label.append("  train" if row.training else "  eval", style="yellow")
    if report.shapes is not None:
        _shapes_cells(label, _shapes_of(report).get(row.name), node.repeat > 1)
    if node.hidden:
        label.append(f"  (+{node.hidden} below --depth)", style="dim")
    return label


def _shapes_of(report: TreeReport) -> dict[str, ModuleShapes]:
    assert report.shapes is not None
    return {m.name: m for m in report.shapes.modules}


def _shapes_cells(label: Text, m: ModuleShapes | None, each: bool) -> None:
    """A second line, '→ [1, 8, 16, 16]  111K MACs  out 8.0 KiB  saved 1.5 KiB', for a module the forward ran."""
    if m is not None and not m.calls and m.type in ("ModuleList", "ModuleDict"):
        return  # containers are never called: their members are
    if m is None or not m.calls:
        label.append("\nnot called", style="dim")
        return
    shapes = [shape_text(s) for s in m.output_shapes[:3]]
    if len(m.output_shapes) > 3:
        shapes.append(f"+{len(m.output_shapes) - 3} more")
    label.append(f"\n→ {', '.join(shapes) or 'no tensors'}", style="cyan")
    suffix = " each" if each else ""
    if m.calls > 1:
        label.append(f"  {m.calls} calls", style="yellow")
    if m.flops:
        label.append(f"  {human_count(m.macs)} MACs{suffix}", style="magenta")
    label.append(f"  out {human_bytes(m.output_bytes)}", style="dim")
    if m.saved_bytes:
        label.append(f"  saved {human_bytes(m.saved_bytes)}", style="dim")


def _add(tree: Tree, node: ModuleNode, report: TreeReport) -> None:
    # An explicit stack, not recursion: a name of 1,000 dotted parts is a tree 1,000 deep.
    stack = [(tree, node)]
    while stack:
        branch, at = stack.pop()
        for t in at.tensors:
            branch.add(_tensor_label(t))
        added = [(branch.add(_module_label(child, report, False)), child) for child in at.children]
        stack.extend(reversed(added))


def tree_renderable(report: TreeReport) -> RenderableType:
    """The module tree followed by the totals table."""
    root = Tree(_module_label(report.root, report, True), guide_style="dim")
    _add(root, report.root, report)
    return Group(_header(report), root, Text(""), totals_table(report))


def _header(report: TreeReport) -> Text:
    text = Text()
    text.append(report.source, style="bold")
    text.append(f"  ({report.format}", style="dim")
    if report.state_dict_key:
        text.append(f", state dict under '{report.state_dict_key}'", style="dim")
    if report.training is not None:
        text.append(f", {'training' if report.training else 'eval'} mode", style="dim")
    text.append(")", style="dim")
    if report.filter:
        text.append(f"  filter: {report.filter}", style="yellow")
    return text


def totals_table(report: TreeReport) -> Text:
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
        rows.append(("Buffers", f"{t.buffers:,}",
                     f"persistent {t.persistent_buffers:,} · non-persistent {t.non_persistent_buffers:,}"))
    rows.append(("Size", human_bytes(t.bytes), f"{t.bytes:,} bytes in {t.tensors:,} tensors"))
    rows += [("By dtype" if i == 0 else "", f"{d.elements:,}", f"{d.dtype} · {human_bytes(d.bytes)}")
             for i, d in enumerate(report.by_dtype)]
    rows += [("Tied" if i == 0 else "", "", " = ".join(reversed(g))) for i, g in enumerate(report.tied)]
    rows += _shapes_rows(report)
    rows += [("Other entries" if i == 0 else "", name, summary)
             for i, (name, summary) in enumerate(report.other_entries)]
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
        text.append(label.ljust(w0), style="bold")
        text.append("  " + value.rjust(w1))
        if detail:
            text.append("  " + detail, style="dim")
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
        ("MACs", human_count(t.macs), f"{t.macs:,} multiply-adds = {t.flops:,} FLOPs / 2, one forward ({mode} mode)"),
        ("Forward", human_bytes(t.forward_bytes), f"{t.forward_bytes:,} bytes of leaf-module outputs"),
        ("Backward", human_bytes(t.backward_bytes), f"{t.backward_bytes:,} bytes saved for backward, each storage once"),
        ("Param bytes", human_bytes(t.param_bytes),
         f"{t.param_bytes:,} bytes in the stored dtypes, tied once; buffers {human_bytes(t.buffer_bytes)}"),
    ]


def _alias_names(report: TreeReport) -> set[str]:
    return {name for group in report.tied for name in group}


def _module_name(name: str) -> str:
    return name or "(model)"


def _indented(name: str) -> str:
    """'blocks.2.act' -> '    act': the table reads as a tree; JSON keeps full names."""
    if not name:
        return "(model)"
    return "  " * name.count(".") + "  " + name.rpartition(".")[2]


def _grad_cell(norm: float | None, nan: int, inf: int, flags: tuple[str, ...]) -> Text:
    if nan or inf:
        return Text(f"nan {nan}" if nan else f"inf {inf}", style="bold red")
    return Text(num(norm), style=_grad_style(flags))


def stats_renderable(report: StatsReport, width: int = 200) -> RenderableType:
    """The per-module table in execution order, then a one-paragraph verdict.

    Narrow terminals lose the histogram first (below 130 columns), then the type column (below 112).
    """
    show_hist, show_type = width >= 130, width >= 112
    called = [m for m in report.modules if m.calls]
    origin = report.nonfinite_origin
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    width = max((len(_indented(m.name)) for m in called), default=8) + 2
    table.add_column("module", no_wrap=True, min_width=min(width, 48), overflow="ellipsis")
    if show_type:
        table.add_column("type", no_wrap=True, overflow="ellipsis", style="green")
    for title in ("calls", "mean", "std", "min", "max", "zeros", "nan/inf", "dead", "‖∇out‖", "‖∇param‖"):
        table.add_column(title, justify="right", no_wrap=True)
    if show_hist:
        table.add_column("hist", no_wrap=True, style="cyan")
    for m in called:
        bad = m.nan or m.inf
        dead_style = "yellow" if {"dead", "mostly-dead"} & set(m.flags) else ""
        name = Text(_indented(m.name), style="bold red" if bad else "")
        if origin is not None and origin.module == m.name:
            name.append(" ◀", style="bold red")
        cells: list[RenderableType | str] = [name, m.type] if show_type else [name]
        cells += [
            str(m.calls), num(m.mean), num(m.std), num(m.min), num(m.max), percent(m.zero_fraction),
            Text(f"{m.nan}/{m.inf}" if bad else "0", style="bold red" if bad else "dim"),
            Text(percent(m.dead_fraction), style=dead_style),
            _grad_cell(m.grad_norm, m.grad_nan, m.grad_inf, m.flags),
            _grad_cell(m.param_grad_norm, m.param_grad_nan, m.param_grad_inf, ()),
        ]
        if show_hist:
            cells.append(sparkline(m.histogram))
        table.add_row(*cells)
    idle = [_module_name(m.name) for m in report.modules if not m.calls]
    parts: list[RenderableType] = [_stats_header(report), table]
    if idle:
        shown = ", ".join(idle[:6]) + (f" and {len(idle) - 6} more" if len(idle) > 6 else "")
        parts.append(Text(f"not called: {shown}", style="dim"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    parts.append(verdict(report))
    return Group(*parts)


def _grad_style(flags: tuple[str, ...]) -> str:
    if "exploding-grad" in flags:
        return "bold red"
    if "vanishing-grad" in flags:
        return "yellow"
    return ""


def _stats_header(report: StatsReport) -> Text:
    text = Text()
    text.append(report.source, style="bold")
    dtype = f", autocast {report.dtype}" if report.dtype else ""
    grads = f", backward on {loss_words(report.loss)}" if report.backward else ", forward only"
    text.append(f"  ({report.mode} mode, {report.device}{dtype}, {report.batches} batch(es){grads})", style="dim")
    text.append(f"\ninputs: {report.inputs}", style="dim")
    return text


def loss_words(loss: str) -> str:
    """What backward ran on, in words: the model's own loss, the sum/mean of the outputs, or --loss FN."""
    if loss in ("sum", "mean"):
        return f"the {loss} of the outputs"
    if loss == "custom":
        return "the --loss function"
    return f"the model's own loss ({loss})"


def _where(module: str | None, typ: str | None) -> str:
    return f"{_module_name(module or '')} ({typ})" if typ else _module_name(module or "")


def _shown(names: Sequence[str], limit: int = 8) -> str:
    collapsed = collapse_names(names)
    more = f" and {len(collapsed) - limit} more" if len(collapsed) > limit else ""
    return ", ".join(collapsed[:limit]) + more


def origin_text(origin: NonfiniteOrigin, first: bool = True) -> str:
    """One origin in words: the op, the module (path and type), what it passed on to."""
    where = _where(origin.module, origin.type)
    if origin.cause == "input":
        text = f"the input already held NaN/Inf ({origin.phase})"
    elif origin.cause == "loss":
        text = "the loss was already NaN/Inf before backward"
    elif origin.cause == "weight":
        text = f"{origin.tensor} {origin.detail} before any forward: it is the cause, in {where}"
    elif origin.cause == "overflow":
        text = f"{origin.detail}" + (f" ({origin.op} in {where}, forward)" if origin.op else "")
    else:
        lead = "first NaN/Inf produced" if first else "in backward, another NaN/Inf is produced"
        phase = f" in {origin.phase}" if first else ""
        if origin.node is not None:
            text = f"{lead}{phase} by {origin.node} ({origin.op}) in {where}"
        elif origin.op is not None:
            text = f"{lead}{phase} by {origin.op} in {where}"
        else:
            text = f"{lead} by {where}{phase}"
    if origin.passed_on:
        text += f"; passed on by {_shown(origin.passed_on)}"
    return text


def origin_lines(origin: NonfiniteOrigin) -> list[str]:
    """The source lines of an origin: where the op ran, and for a backward node the forward line that made it."""
    lines = []
    if origin.source is not None:
        lines.append(f"  at {origin.source}  {origin.code or ''}".rstrip())
    if origin.created_at is not None:
        lines.append(f"  {origin.node} was created in forward at {origin.created_at}  {origin.created_code or ''}".rstrip())
    return lines


def verdict_text(report: StatsReport) -> str:
    """The verdict, as plain text (the renderer styles it): findings, then source lines, then diagnoses."""
    parts: list[str] = []
    lines: list[str] = []
    origin = report.nonfinite_origin
    if origin is not None:
        parts.append(origin_text(origin))
        lines += origin_lines(origin)
    elif report.nonfinite_found:
        parts.append("non-finite values were found (see the nan/inf column)")
    else:
        parts.append("every activation" + (" and gradient" if report.backward else "") + " was finite")
    if report.backward_origin is not None:
        parts.append(origin_text(report.backward_origin, first=False))
        lines += origin_lines(report.backward_origin)
    dead: dict[tuple[str, str, int | None], list[str]] = {}
    for m in report.modules:
        if m.dead_fraction:
            dead.setdefault((m.type, percent(m.dead_fraction), m.units), []).append(m.name)
    for (typ, share, units), names in dead.items():
        parts.append(f"{_shown(names)} ({typ}): {share} of {units} units dead")
    for flag, words in (("exploding-grad", "exploding gradient norm"), ("vanishing-grad", "vanishing gradient norm")):
        by_type: dict[str, list[str]] = {}
        for m in report.modules:
            if flag in m.flags:
                by_type.setdefault(m.type, []).append(m.name)
        for typ, names in by_type.items():
            parts.append(f"{words} at {_shown(names, 5)} ({typ})")
    text = "; ".join(parts)
    if text.startswith(("first ", "the ", "every ", "non-finite ")):  # a sentence, not a module name
        text = text[0].upper() + text[1:]
    out = [text + ".", *lines]
    out += [f"Diagnosis: {d}." for d in report.diagnoses]
    return "\n".join(out)


def verdict(report: StatsReport) -> Text:
    style = "bold red" if report.nonfinite_found else "bold green"
    return Text("\n" + verdict_text(report), style=style)


def _names_block(title: str, names: list[str], style: str) -> Text:
    text = Text()
    text.append(f"{title} ({len(names)})\n", style=f"bold {style}")
    shown = collapse_indices(names)
    for name in shown[:40]:
        text.append(f"  {name}\n")
    if len(shown) > 40:
        text.append(f"  … {len(shown) - 40} more (see --json)\n", style="dim")
    text.rstrip()
    return text


def diff_renderable(report: DiffReport, limit: int = 50) -> RenderableType:
    """Summary first, then changed tensors by severity, the per-module roll-up, then structural differences."""
    parts: list[RenderableType] = []
    head = Text()
    head.append("A ", style="bold")
    head.append(f"{report.a}  ({report.format_a})\n")
    head.append("B ", style="bold")
    head.append(f"{report.b}  ({report.format_b})\n")
    nan = "NaN equals NaN" if report.nan_equal else "NaN differs from everything"
    head.append(f"tolerance: {report.tolerance}; {nan}", style="dim")
    parts.append(head)
    summary = Text()
    summary.append(f"\n{report.compared} compared: {report.equal} equal", style="bold")
    if report.close:
        summary.append(f" ({len(report.close)} within tolerance, not identical)")
    summary.append(f", {len(report.changed)} changed", style="bold red" if report.changed else "bold")
    structural = [
        (len(report.only_in_a), "only in A"), (len(report.only_in_b), "only in B"),
        (len(report.shape_mismatch), "shape mismatches"), (len(report.dtype_mismatch), "dtype mismatches"),
    ]
    summary.append("; " + ", ".join(f"{n} {label}" for n, label in structural),
                   style="bold red" if any(n for n, _ in structural) else "")
    parts.append(summary)
    for hint in report.hints:
        parts.append(Text(f"hint: {hint}", style="yellow"))
    if report.changed:
        parts.append(Text("\nChanged, most severe first", style="bold"))
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
        table.add_column("tensor", overflow="fold")
        for title in ("shape", "differing", "max |Δ|", "mean |Δ|", "rel L2", "cosine", "NaN A/B"):
            table.add_column(title, justify="right", no_wrap=True)
        for d in report.changed[:limit]:
            table.add_row(
                d.name, shape_text(d.shape), f"{d.differing:,}/{d.numel:,}", num(d.max_abs_diff), num(d.mean_abs_diff),
                num(d.rel_l2), num(d.cosine), f"{d.nan_a}/{d.nan_b}" if d.nan_a or d.nan_b else "",
            )
        parts.append(table)
        if len(report.changed) > limit:
            parts.append(Text(f"… {len(report.changed) - limit} more changed tensors (see --json)", style="dim"))
    if report.rollup:
        text = Text("\nBy module\n", style="bold")
        for r in report.rollup[:limit]:
            text.append(f"  {r.module or '(top level)'}: {r.changed} of {r.tensors} tensors changed, "
                        f"max |Δ| {r.max_abs_diff:.1e}\n")
        text.rstrip()
        parts.append(text)
    if report.only_in_a:
        parts.append(_names_block("\nOnly in A", list(report.only_in_a), "red"))
    if report.only_in_b:
        parts.append(_names_block("\nOnly in B", list(report.only_in_b), "red"))
    for title, items in (("Shape mismatches", report.shape_mismatch), ("Dtype mismatches", report.dtype_mismatch)):
        if items:
            text = Text(f"\n{title} ({len(items)})\n", style="bold red")
            for m in items[:limit]:
                text.append(f"  {m.name}: {m.a} in A, {m.b} in B\n")
            text.rstrip()
            parts.append(text)
    if report.aliased:
        text = Text(f"\nTied names matched through their partner ({len(report.aliased)})\n", style="bold")
        for name, via in report.aliased:
            text.append(f"  {name} = {via}\n", style="dim")
        text.rstrip()
        parts.append(text)
    verdict_line = Text("\nThe checkpoints differ." if report.differs else "\nNo differences within tolerance.",
                        style="bold red" if report.differs else "bold green")
    parts.append(verdict_line)
    return Group(*parts)


def load_renderable(report: LoadReport) -> RenderableType:
    """The plan grouped by status (layer indices collapsed), then what was done."""
    plan = report.plan
    parts: list[RenderableType] = []
    head = Text()
    head.append("model       ", style="bold")
    head.append(f"{report.model}\n")
    head.append("checkpoint  ", style="bold")
    head.append(report.checkpoint)
    parts.append(head)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("status", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("keys", overflow="fold")
    cast = {m.name: m for m in plan.cast}
    rows: list[tuple[str, str, list[str]]] = [
        ("loaded", "green", [n for n in plan.loaded if n not in cast]),
        ("cast", "yellow", [f"{m.name} ({m.checkpoint} → {m.model}: copy_ converts silently)" for m in plan.cast]),
        ("tied", "green", [f"{a.name} = {a.target}" for a in plan.tied]),
        ("mismatched", "red", [f"{m.name} {m.model} in the model, {m.checkpoint} in the checkpoint"
                               for m in plan.mismatched]),
        ("missing", "red", list(plan.missing)),
        ("unexpected", "red", list(plan.unexpected)),
    ]
    for status, style, names in rows:
        if not names:
            continue
        shown = collapse_indices(names) if status in ("loaded", "missing", "unexpected") else names
        listing = "\n".join(shown[:30]) + (f"\n… {len(shown) - 30} more (see --json)" if len(shown) > 30 else "")
        table.add_row(Text(status, style=f"bold {style}"), str(len(names)), listing)
    parts.append(table)
    for hint in plan.hints:
        parts.append(Text(f"hint: {hint}", style="yellow"))
    parts.append(Text(_load_outcome(report), style="bold red" if report.strict_failed else "bold"))
    return Group(*parts)


def _load_outcome(report: LoadReport) -> str:
    plan = report.plan
    if report.strict_failed:
        return "--strict: the checkpoint does not match every key; nothing was loaded or written."
    if report.dry_run:
        return f"Dry run: {len(plan.loaded)} tensors would load; nothing was changed."
    if not report.performed:
        return "Nothing was loaded."
    skipped = f", {len(plan.mismatched)} mismatched left at the model's values" if plan.mismatched else ""
    wrote = f"; wrote {report.written}" if report.written else ""
    return f"Loaded {len(plan.loaded)} tensors into the model{skipped}{wrote}."


def _last(values: tuple[float | None, ...], bad: tuple[bool, ...], fmt: Callable[[float | None], str]) -> Text:
    if bad and bad[-1]:
        return Text("nan/inf", style="bold red")
    return Text(fmt(values[-1]) if values else "—")


def run_renderable(report: RunReport, width: int = 200) -> RenderableType:
    """Per module, sparklines over the logged steps of std, ‖∇out‖ and dead fraction; then the first bad step.

    The three sparklines share what the other columns leave of `width` (one cell per step, or per run of
    steps); below 100 columns the type goes, below 90 the last values.
    """
    show_type, show_last = width >= 100, width >= 90
    names = [_indented(m.name) for m in report.modules]
    name_w = min(max((len(n) for n in names), default=8) + 2, 48)  # + " ◀"
    type_w = min(max((len(m.type) for m in report.modules), default=4), 24)
    # Each column is followed by 3 cells (padding, SIMPLE_HEAD's blank divider, padding); a last value takes ≤ 9.
    fixed = name_w + 3 + (type_w + 3 if show_type else 0) + (3 * (9 + 3) if show_last else 0) + 3 * 3 + 6
    spark_w = max(4, min(len(report.steps), (width - fixed) // 3))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("module", no_wrap=True, max_width=48, overflow="ellipsis")
    if show_type:
        table.add_column("type", no_wrap=True, max_width=24, overflow="ellipsis", style="green")
    grad_title = "‖∇out‖ (log)" if spark_w >= 12 else "‖∇out‖"
    for title in ("std", grad_title, "dead"):
        table.add_column(title, no_wrap=True, style="cyan", min_width=spark_w)
        if show_last:
            table.add_column("last", justify="right", no_wrap=True)
    table.add_column("bad at", justify="right", no_wrap=True)
    origin = report.first_bad
    for m, name in zip(report.modules, names, strict=True):
        label = Text(name, style="bold red" if m.first_bad_step is not None else "")
        if origin is not None and origin.module == m.name:
            label.append(" ◀", style="bold red")
        cells: list[RenderableType | str] = [label, m.type] if show_type else [label]
        for spark, last in (
            (series_sparkline(m.std, m.nonfinite, spark_w), _last(m.std, m.nonfinite, num)),
            (Text(series_sparkline(m.grad_norm, m.grad_nonfinite, spark_w, log=True), style=_grad_style(m.flags)),
             _last(m.grad_norm, m.grad_nonfinite, num)),
            (series_sparkline(m.dead_fraction, (), spark_w, lo=0.0, hi=1.0), _last(m.dead_fraction, (), percent)),
        ):
            cells += [spark, last] if show_last else [spark]
        cells.append(Text("—" if m.first_bad_step is None else str(m.first_bad_step),
                          style="bold red" if m.first_bad_step is not None else "dim"))
        table.add_row(*cells)
    return Group(_run_header(report, spark_w), table, _run_verdict(report))


def _run_header(report: RunReport, spark_w: int) -> Text:
    import datetime

    h = report.header
    text = Text()
    text.append(report.path, style="bold")
    ranks = f", {h.world_size} ranks" if h.world_size > 1 else ""
    text.append(f"  ({h.schema}: {h.model} on {h.device}{ranks}, every {h.every} steps)", style="dim")
    try:
        started = datetime.datetime.fromtimestamp(h.started, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a header's clock can be anything
        started = f"at unix time {h.started}"
    steps = report.steps
    span = f"steps {steps[0]} … {steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    text.append(f"\n{len(steps)} logged step(s), {span}, started {started}", style="dim")
    losses = [v for v in report.loss if v is not None]
    if losses:
        text.append(f"\nloss {num(losses[0])} → {num(losses[-1])}  ")
        # A null loss in a run that logs one was not finite (the schema writes NaN/Inf as null): mark it.
        text.append(series_sparkline(report.loss, tuple(v is None for v in report.loss), spark_w), style="cyan")
    return text


def _run_verdict(report: RunReport) -> Text:
    bad = report.first_bad
    if bad is None:
        text = Text(f"\nNo NaN/Inf in {len(report.steps)} logged step(s).", style="bold green")
    else:
        text = Text("\n" + bad_step_text(bad), style="bold red")
    for flag, words in (("exploding-grad", "exploding"), ("vanishing-grad", "vanishing")):
        flagged = [_module_name(m.name) for m in report.modules if flag in m.flags]
        if flagged:
            text.append(f"\nGradient flow: {words} mean ‖∇out‖ at {', '.join(flagged[:5])}"
                        + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "") + ".", style="yellow")
    return text
