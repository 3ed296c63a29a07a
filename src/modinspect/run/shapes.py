"""Output shapes, FLOPs/MACs and activation memory of one forward pass, run on the meta device.

The model is copied to the meta device (parameters and buffers become meta tensors; nothing is
copied) and the forward runs there, so a model far larger than memory costs only its Python
objects. FLOPs come from torch's own `FlopCounterMode` and are attributed to the module that ran
them; a module's figures include its children's, and a module called twice sums both calls.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import UsageError
from modinspect.reports import ModuleNode, ModuleShapes, ShapesReport, ShapesTotals, TreeReport
from modinspect.run.inputs import InputSpec, map_tensors
from modinspect.sources.base import Source, TensorInfo
from modinspect.tensors import iter_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

Batch = tuple[tuple[Any, ...], dict[str, Any]]


def extra_reprs(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """(module name, `extra_repr()`) for every module whose hyperparameters `print(model)` shows."""
    out: list[tuple[str, str]] = []
    for name, mod in model.named_modules(remove_duplicate=False):
        try:
            text = str(mod.extra_repr())
        except Exception:  # a user's extra_repr that fails must not break the tree
            continue
        # A torch.jit.load'ed module keeps no extra_repr: its default one only repeats the class name.
        if text and text != f"original_name={getattr(mod, 'original_name', None)}":
            out.append((name, text))
    return tuple(out)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are meta tensors; the original's data is never copied.

    Tied tensors stay tied: deepcopy's memo maps each original tensor, by identity, to one meta twin.
    """
    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        if all(t.device.type == "meta" for t in (*model.parameters(), *model.buffers())):
            return model  # already data-free: run it as it is (the hooks are removed afterwards)
        raise UsageError(
            f"the model cannot be copied to the meta device ({_describe_failure(exc)}); build it "
            "there instead: an entry point with --meta"
        ) from exc


def _nbytes(t: torch.Tensor) -> int:
    return dtypes.nbytes(str(t.dtype).removeprefix("torch."), t.numel(), unknown_bits=8)


def _storage_key(t: torch.Tensor) -> int:
    # The StorageImpl's address: unique among live storages, on meta as on any device.
    return int(t.untyped_storage()._cdata)


@dataclasses.dataclass
class _Acc:
    type: str
    calls: int = 0
    output_shapes: tuple[tuple[int, ...], ...] = ()
    output_dtypes: tuple[str, ...] = ()
    output_bytes: int = 0
    saved: dict[int, int] = dataclasses.field(default_factory=dict)


class _Recorder:
    """Forward hooks that keep a stack of running modules; a saved-tensor hook charges each to the stack."""

    def __init__(self, model: nn.Module, exclude: set[int]) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.accs = {n: _Acc(type(m).__name__) for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.saved: dict[int, int] = {}
        self.exclude = exclude

    def pre(self, mod: nn.Module, args: Any) -> None:
        self.stack.append(self.names[id(mod)])

    def post(self, mod: nn.Module, args: Any, output: Any) -> None:
        name = self.names[id(mod)]
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        acc = self.accs[name]
        tensors = list(iter_tensors(output))
        acc.calls += 1
        if acc.calls == 1:
            acc.output_shapes = tuple(tuple(t.shape) for t in tensors)
            acc.output_dtypes = tuple(str(t.dtype).removeprefix("torch.") for t in tensors)
        acc.output_bytes += sum(_nbytes(t) for t in tensors)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key, size = _storage_key(t), int(t.untyped_storage().nbytes())
        except (
            RuntimeError,
            NotImplementedError,
            TypeError,
        ):  # a tensor without a plain storage (sparse, nested)
            return t
        if key not in self.exclude:
            self.saved[key] = size
            for name in self.stack:
                self.accs[name].saved[key] = size
        return t


def _to_meta(batch: Batch) -> Batch:
    import torch

    return map_tensors(batch, lambda t: torch.empty_like(t, device="meta"))


def _flops_by_module(counter: Any, model: nn.Module) -> dict[str, int]:
    """FlopCounterMode's counts under our dotted names.

    It names modules as its ModuleTracker does ("ResNet.layer1.0.conv1": the root's class, then the
    path); its tracker records which module object got which name, so we map through the objects.
    """
    ours = {id(m): n for n, m in model.named_modules()}
    tracker = getattr(getattr(counter, "mod_tracker", None), "_known_modules", None)
    by_tracker_name: dict[str, str] = {}
    if tracker is not None:
        for mod, tname in list(tracker.items()):
            if id(mod) in ours:
                by_tracker_name[str(tname)] = ours[id(mod)]
    root = type(model).__name__
    out: dict[str, int] = {}
    for tname, ops in counter.get_flop_counts().items():
        if tname == "Global":
            continue
        name = by_tracker_name.get(tname)
        if name is None:  # no tracker map: strip the root's class name
            name = "" if tname == root else tname.removeprefix(root + ".")
        out[name] = out.get(name, 0) + int(sum(ops.values()))
    return out


def _param_bytes(tensors: Sequence[TensorInfo]) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) in the stored dtypes, each storage once."""
    seen: set[str] = set()
    params = buffers = 0
    for t in tensors:
        key = t.storage if t.storage is not None else f"name:{t.name}"
        if key in seen:
            continue
        seen.add(key)
        if t.kind == "buffer":
            buffers += t.nbytes
        else:
            params += t.nbytes
    return params, buffers


def _apply_stored_dtypes(model: nn.Module, tensors: Sequence[TensorInfo]) -> None:
    """Give the meta copy the dtypes the weights are stored in (a bf16 file read into an fp32-built model)."""
    import torch

    stored = {t.name: t.dtype for t in tensors}
    floating = {
        d for n, p in model.named_parameters() if (d := stored.get(n)) and p.is_floating_point()
    }
    if len(floating) == 1:
        dtype = getattr(torch, floating.pop(), None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            model.to(dtype)


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def measure_shapes(
    model: nn.Module, batch: Batch, *, tensors: Sequence[TensorInfo] = (), inputs: str = ""
) -> ShapesReport:
    """Run one forward of a meta copy of `model` on `batch` (moved to meta) and measure every module.

    Nothing is allocated: the copy and the inputs live on the meta device; FLOPs are torch.utils.flop_counter's.

    Args:
        model: the nn.Module to measure (left untouched: a meta copy runs).
        batch: what the model is called with, as `(args, kwargs)`.
        tensors: the source's TensorInfo, whose stored dtypes are used for the copy and the byte totals.
        inputs: a description of the inputs, kept in the report.

    Returns:
        A ShapesReport: per module (named as in the tree) its output shapes, FLOPs, output and saved bytes,
        and the totals.

    Raises:
        UsageError: the forward could not run on the meta device (data-dependent steps, wrong inputs).

    Example:
        >>> shapes = modinspect.measure_shapes(torch.nn.Linear(4, 8), ((torch.randn(16, 4),), {}))
        >>> shapes.totals.macs, shapes.modules[0].output_shapes
        (512, ((16, 8),))
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = meta_copy(model)
    if tensors:
        _apply_stored_dtypes(meta, tensors)
    exclude = {_storage_key(t) for t in (*meta.parameters(), *meta.buffers())}
    recorder = _Recorder(meta, exclude)
    args, kwargs = _to_meta(batch)
    input_bytes = sum(_nbytes(t) for t in iter_tensors((args, kwargs)))
    handles = []
    counter = FlopCounterMode(display=False)
    try:
        for _, mod in meta.named_modules():
            handles.append(mod.register_forward_pre_hook(recorder.pre))
            handles.append(mod.register_forward_hook(recorder.post))
        # Grad on, whatever the caller's context: what autograd saves is part of the measure.
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t),
            counter,
        ):
            meta(*args, **kwargs)
    except Exception as exc:
        where = f" in {recorder.stack[-1] or '(model)'}" if recorder.stack else ""
        raise UsageError(
            f"the forward pass could not run on the meta device{where} ({_describe_failure(exc)}); shapes need a "
            "forward without data-dependent steps (.item(), nonzero, boolean masks) and inputs of the right shape "
            "and dtype"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    flops = _flops_by_module(counter, meta)
    modules = tuple(
        ModuleShapes(
            name=name,
            type=acc.type,
            calls=acc.calls,
            output_shapes=acc.output_shapes,
            output_dtypes=acc.output_dtypes,
            flops=flops.get(name, 0),
            output_bytes=acc.output_bytes,
            saved_bytes=sum(acc.saved.values()),
        )
        for name, acc in recorder.accs.items()
    )
    # A module reachable under two names (shared, not copied) ran once: each name shows those figures.
    first = {m.name: m for m in modules}
    modules += tuple(
        dataclasses.replace(first[recorder.names[id(mod)]], name=name)
        for name, mod in meta.named_modules(remove_duplicate=False)
        if name not in first
    )
    children = {n.rpartition(".")[0] for n in recorder.accs if n}
    leaves = [m for m in first.values() if m.name not in children and m.calls]
    param_bytes, buffer_bytes = _param_bytes(tensors) if tensors else _live_bytes(model)
    totals = ShapesTotals(
        input_bytes=input_bytes,
        forward_bytes=sum(m.output_bytes for m in leaves),
        backward_bytes=sum(recorder.saved.values()),
        param_bytes=param_bytes,
        buffer_bytes=buffer_bytes,
        flops=int(counter.get_total_flops()),
    )
    return ShapesReport(
        inputs=inputs, training=bool(model.training), modules=modules, totals=totals
    )


def _live_bytes(model: nn.Module) -> tuple[int, int]:
    from modinspect.sources.module import module_tensor_infos

    return _param_bytes(module_tensor_infos(model))


def _member_reprs(reprs: dict[str, str], prefix: str) -> dict[str, str]:
    return {
        n[len(prefix) :]: r for n, r in reprs.items() if n == prefix or n.startswith(prefix + ".")
    }


def _differing_runs(node: ModuleNode, reprs: dict[str, str]) -> Iterator[str]:
    """Runs of blocks collapsed into one row whose members' hyperparameters are not all the same."""
    for child in node.children:
        if child.repeat > 1 and child.last_name:
            parent, _, first = child.row.name.rpartition(".")
            dot = f"{parent}." if parent else ""
            last = int(child.last_name.rpartition(".")[2])
            members = [_member_reprs(reprs, f"{dot}{i}") for i in range(int(first), last + 1)]
            if any(m != members[0] for m in members[1:]):
                yield f"{child.row.name} … {child.last_name}"
        yield from _differing_runs(child, reprs)


def with_shapes(
    report: TreeReport, shapes: ShapesReport | None, reprs: tuple[tuple[str, str], ...]
) -> TreeReport:
    """The tree report with the per-module shapes/compute part and the layers' hyperparameters attached.

    A collapsed run shows its first member's hyperparameters; a note names the runs whose members differ.
    """
    differing = list(_differing_runs(report.root, dict(reprs)))
    notes = report.notes + tuple(
        f"{run}: hyperparameters differ between the blocks (shown: the first); --expand shows each"
        for run in differing
    )
    return dataclasses.replace(report, shapes=shapes, extra_reprs=reprs, notes=notes)


def _stored_float_dtype(tensors: Sequence[TensorInfo]) -> str:
    floating = {t.dtype for t in tensors if t.kind != "buffer" and t.dtype in dtypes.COMPUTE_FLOATS}
    return floating.pop() if len(floating) == 1 else "float32"


def _has_input(model: nn.Module, spec: InputSpec, extra: dict[str, Any]) -> bool:
    return bool(
        spec.file
        or spec.shapes
        or getattr(model, "example_input_array", None) is not None
        or "input_shape" in extra
        or "input" in extra
    )


def add_layers(
    report: TreeReport,
    source: Source,
    spec: InputSpec | None,
    config_extra: dict[str, Any] | None = None,
) -> TreeReport:
    """The tree report with each live layer's extra_repr() and, when `spec` is given, a meta forward's shapes.

    Args:
        report: the source's TreeReport (from `build_tree`).
        source: the Source it was built from; shapes need its live module.
        spec: where the input comes from (an InputSpec: a file, shapes, or else the model's
            `example_input_array` or `config_extra`'s `input_shape`/`input`); None: no forward, extra_repr()s
            only. Its dtype "" means the default: int64 below the vocabulary when the model has an
            nn.Embedding, else the stored weights' float dtype.
        config_extra: the [tool.modinspect] table's other keys (`input_shape`, `input`, `input_dtype`).

    Returns:
        The report with `extra_reprs` and, with `spec`, `shapes` (a ShapesReport) filled in.

    Raises:
        UsageError: shapes asked of a checkpoint without the model's code, or a forward the meta device
            cannot run.

    Example:
        >>> source = modinspect.open_source(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()))
        >>> spec = modinspect.InputSpec(shapes=((16, 4),))
        >>> report = modinspect.add_layers(modinspect.build_tree(source), source, spec)
        >>> report.extra_reprs[0], report.shapes.totals.macs
        (('0', 'in_features=4, out_features=8, bias=True'), 512)
    """
    from modinspect.run.inputs import first_embedding_size, resolve_batches

    model = source.module
    if model is None:
        if spec is not None:
            raise UsageError(
                f"shapes need a forward pass, and {source.label} is a checkpoint without the model's code: pass an "
                f"entry point (file.py:NAME, with --weights {source.label} or --meta) or a Hugging Face directory"
            )
        return report
    reprs = extra_reprs(model)
    if spec is None:
        return with_shapes(report, None, reprs)
    if source.format == "torchscript":
        raise UsageError(
            f"{source.label} is TorchScript, whose modules take no Python hooks; measure shapes on the "
            f"Python model instead, e.g. an entry point with --meta"
        )
    extra = dict(config_extra or {})
    if not _has_input(model, spec, extra):
        raise UsageError(
            "shapes need an input: pass --input FILE or --input-shape 1,3,224,224 (repeatable), set "
            "example_input_array on the model, or add input_shape to [tool.modinspect]"
        )
    if spec.dtype:  # given explicitly: it wins over [tool.modinspect]'s input_dtype too
        extra["input_dtype"] = spec.dtype
    else:
        default = (
            "int64"
            if first_embedding_size(model) is not None
            else _stored_float_dtype(source.tensors)
        )
        spec = dataclasses.replace(spec, dtype=default)
        extra.setdefault("input_dtype", default)
    batches, described = resolve_batches(model, dataclasses.replace(spec, batches=1), extra)
    batch = next(iter(batches))
    described = described.removesuffix(" × 1 batch(es), seed 0").replace(" × 1 batch(es)", "")
    shapes = measure_shapes(model, batch, tensors=source.tensors, inputs=described)
    return with_shapes(report, shapes, reprs)
