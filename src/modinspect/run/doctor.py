"""`modinspect.doctor`: look at a live model (or a checkpoint) for the classic nn.Module mistakes.

    report = modinspect.doctor(model, (x,))                      # live checks, one forward and backward
    report = modinspect.doctor(model, (x,), optimizer=opt)       # + parameters missing from the optimizer
    report = modinspect.doctor("ckpt.safetensors")               # a checkpoint without code: value checks

The run-time checks watch one forward pass (global module hooks, and a profile function that sees the
frames of the model's forwards, of custom autograd Functions, of modules and Parameters built on the way),
then run one backward on the model's own loss (or the sum of its floating outputs). The model is left as
it was found: modes, gradients, requires_grad, buffers and the RNG state are restored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.analysis.doctor_code import (
    assigned_twice_findings,
    finding,
    global_tensor_findings,
    mode_findings,
    optimizer_findings,
    registration_findings,
    value_findings,
)
from modinspect.errors import ModinspectError, UsageError
from modinspect.reports.doctor import CATALOG, RANK, DoctorReport, Finding, Location, check_ids
from modinspect.run.doctor_functions import (
    DEFAULT_BUDGET_S,
    check_function,
    count_from_error,
    ctx_tensor_findings,
)
from modinspect.run.doctor_watch import MIN_CHAIN, Watch, uses, watching
from modinspect.sources.base import Source

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["doctor"]

Batch = tuple[tuple[Any, ...], dict[str, Any]]
MIN_EXAMPLES_FOR_DEAD = (
    16  # below this many examples per unit, a unit can be zero for all of them by chance
)
DEAD_FRACTION = 0.5
SCALE_ORDERS = 2.0  # activation scale changing by 10^2 along a chain of repeated blocks


class ForwardFailed(ModinspectError):
    """The model's forward or backward raised, for a reason doctor does not explain."""


def doctor(
    model_or_source: nn.Module | Source | str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    optimizer: Any = None,
    select: list[str] | tuple[str, ...] | None = None,
    ignore: list[str] | tuple[str, ...] | None = None,
    expect: dict[str, float] | None = None,
    context: str | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    inputs_described: str | None = None,
) -> DoctorReport:
    """Check a model (or a checkpoint) for the classic mistakes; returns a DoctorReport, never prints.

    Args:
        model_or_source: an nn.Module, a Source from `modinspect.open_source`, or a path/entry point for it.
            A checkpoint without code gets the checks on stored values only.
        example_inputs: what the model is called with: a tensor, a tuple of positional inputs, a dict of
            keyword inputs, or `(args, kwargs)`. None: the model's `example_input_array`, else no run.
        optimizer: the optimizer that will train it: trainable parameters it lacks are errors.
        select: check identifiers to keep (`modinspect.reports.doctor.CATALOG`); None: all.
        ignore: check identifiers to drop.
        expect: intended gradient multiples of custom Functions, e.g. {"GradReverse": -0.1}.
        context: "training" or "inference"; default: the root module's mode.
        budget_s: CPU seconds of gradcheck per custom Function.
        inputs_described: a description of `example_inputs`, kept in the report.

    Returns:
        A DoctorReport: the findings (most severe first), the checks that ran, notes on what could not be checked.

    Raises:
        UsageError: an unknown check identifier or context.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)  # the last layer left out
        >>> report = modinspect.doctor(model, torch.randn(16, 4), optimizer=optimizer)
        >>> [(f.id, f.where.key) for f in report.findings if f.severity == "error"]
        [('param-not-in-optimizer', '2.weight'), ('param-not-in-optimizer', '2.bias')]
    """
    chosen, dropped = check_ids(select, "--select"), check_ids(ignore, "--ignore")
    if context not in (None, "training", "inference"):
        raise UsageError(f"context {context!r} is not training or inference")
    source = model_or_source
    if isinstance(source, str | os.PathLike):
        from modinspect.run.source import open_source

        source = open_source(source if isinstance(source, str) else Path(source))
    if isinstance(source, Source):
        if source.module is None:
            from modinspect.analysis.doctor_checks import checkpoint_findings

            stored, stored_notes = checkpoint_findings(source)
            stored_checks = tuple(c.id for c in CATALOG.values() if c.scope == "checkpoint")
            return _report(
                source.label,
                "checkpoint",
                "",
                "",
                stored,
                stored_checks,
                stored_notes,
                chosen,
                dropped,
            )
        label, model = source.label, source.module
    else:
        import torch

        if not isinstance(source, torch.nn.Module):
            raise UsageError(
                f"doctor takes an nn.Module, a Source or a path, not a {type(source).__name__}"
            )
        label, model = type(source).__name__, source
    ctx = context or ("training" if model.training else "inference")
    findings = static_findings(model, ctx, optimizer)
    globals_ = global_tensor_findings(model)
    notes: list[str] = []
    checks = [
        c.id
        for c in CATALOG.values()
        if c.scope in ("module", "init")
        and c.id not in ("activation-scale-with-depth", "dead-relu-at-init")
    ] + ["nonfinite-weights"]
    if optimizer is not None:
        checks.append("param-not-in-optimizer")
    batch = _as_batch(example_inputs) if example_inputs is not None else _example(model)
    described = ""
    if batch is None:
        notes.append(
            "no example input: the forward/backward checks did not run (pass example_inputs, "
            "--input-shape or --input, or set example_input_array)"
        )
        findings += [f for f, _ in globals_]
    else:
        from modinspect.run.inputs import describe_batch

        described = inputs_described or describe_batch(batch)
        run_findings, run_notes, used = run_checks(
            model, batch, ctx, expect or {}, budget_s, [t for _, t in globals_]
        )
        findings += [f for f, t in globals_ if id(t) in used]
        findings += run_findings
        notes += run_notes
        checks += [
            c.id
            for c in CATALOG.values()
            if c.scope in ("run", "function") and c.id != "param-not-in-optimizer"
        ] + ["activation-scale-with-depth", "dead-relu-at-init"]
    return _report(
        label,
        "module",
        ctx,
        described,
        findings,
        tuple(dict.fromkeys(checks)),
        notes,
        chosen,
        dropped,
    )


def _report(
    label: str,
    kind: Any,
    context: str,
    inputs: str,
    findings: list[Finding],
    checks: tuple[str, ...],
    notes: list[str],
    chosen: tuple[str, ...],
    dropped: tuple[str, ...],
) -> DoctorReport:
    keep = [f for f in findings if (not chosen or f.id in chosen) and f.id not in dropped]
    keep.sort(key=lambda f: (-RANK[f.severity], f.id))  # stable: the model's order within a check
    ran = tuple(c for c in checks if (not chosen or c in chosen) and c not in dropped)
    return DoctorReport(label, kind, context, inputs, tuple(keep), ran, tuple(notes))


def static_findings(model: nn.Module, context: str, optimizer: Any = None) -> list[Finding]:
    """The checks that need no forward pass (well under a second on GPT-2 small)."""
    findings = [
        *registration_findings(model),
        *assigned_twice_findings(model),
        *mode_findings(model, context),
        *value_findings(model),
    ]
    if optimizer is not None:
        findings += optimizer_findings(model, optimizer)
    return findings


def _as_batch(inputs: Any) -> Batch:
    import torch

    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if (
        isinstance(inputs, tuple)
        and len(inputs) == 2
        and isinstance(inputs[0], tuple)
        and isinstance(inputs[1], dict)
    ):
        return inputs[0], inputs[1]
    if isinstance(inputs, tuple | list):
        return tuple(inputs), {}
    raise UsageError(
        f"example_inputs is a {type(inputs).__name__}: pass a tensor, a tuple, a dict or (args, kwargs)"
    )


def _example(model: nn.Module) -> Batch | None:
    from modinspect.run.inputs import example_batch

    return example_batch(model)


# ---------------------------------------------------------------- the run and what it found


def run_checks(
    model: nn.Module,
    batch: Batch,
    context: str,
    expect: dict[str, float],
    budget_s: float,
    globals_: list[torch.Tensor] | None = None,
) -> tuple[list[Finding], list[str], set[int]]:
    """One watched forward and one backward: the run-time findings, notes, and the ids of the module-level
    tensors of `globals_` that an operation of the forward took as an argument."""
    import torch

    from modinspect.run.stats import _loss, preserved

    findings: list[Finding] = []
    notes: list[str] = []
    args, kwargs = batch
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with preserved(model), torch.random.fork_rng(devices=cuda):
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(0)
        failure: BaseException | None = None
        with watching(model) as watch, uses(globals_ or []) as used:
            try:
                output = model(*args, **kwargs)
            except Exception as exc:
                failure = exc
        if not watch.profiled:
            notes.append(
                "another profiler is active (sys.setprofile): modules and Parameters built in forward, "
                "forward called past __call__, and custom autograd Functions were not checked"
            )
        findings += _batchnorm_findings(watch, failure)
        findings += _created_findings(watch, model)
        findings += _bypass_findings(watch)
        if failure is not None:
            if not any(
                f.id == "batchnorm-batch-of-one" and f.severity == "error" for f in findings
            ):
                raise ForwardFailed(
                    f"the model's forward raised {type(failure).__name__}: {_first_line(failure)}"
                )
            notes.append("the forward raised (explained above), so the checks after it did not run")
            return findings, notes, used
        nodes = _function_nodes(output)
        findings += ctx_tensor_findings(nodes, watch.functions)
        findings += _probability_findings(watch, output, context)
        findings += _relu_findings(watch)
        findings += _scale_findings(watch, model)
        loss, _ = _loss(output, "auto")
        backward_ok = False
        if loss is None:
            notes.append("no floating output requires grad: the backward checks did not run")
        else:
            try:
                torch.autograd.backward(loss)
                backward_ok = True
            except RuntimeError as exc:
                found = count_from_error(str(exc), watch.functions)
                if found is None:
                    raise ForwardFailed(
                        f"backward raised {type(exc).__name__}: {_first_line(exc)}"
                    ) from None
                findings.append(found)
                notes.append(
                    "backward raised (explained above), so the unused-parameter check did not run"
                )
        if backward_ok:
            findings += _unused_findings(model, watch)
    counted = {f.where.function for f in findings if f.id == "autograd-function-gradient-count"}
    for cls, call in watch.functions.items():
        if cls in nodes or cls.__name__ in counted or any(cls is c for c in nodes):
            more, more_notes = check_function(call, expect, budget_s, {n for n in counted if n})
            findings += more
            notes += more_notes
    return findings, notes, used


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _function_nodes(output: Any) -> dict[type, Any]:
    """The first backward node of each custom Function reachable from the output's graph."""
    from modinspect.tensors import iter_tensors

    found: dict[type, Any] = {}
    seen: set[int] = set()
    keep: list[Any] = []
    stack = [t.grad_fn for t in iter_tensors(output) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and cls not in found and not cls.__module__.startswith("torch."):
            found[cls] = node
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def _batchnorm_findings(watch: Watch, failure: BaseException | None) -> list[Finding]:
    out = []
    for path, per_channel in watch.batch_of_one.items():
        raised = per_channel <= 1 or (
            failure is not None and "more than 1 value per channel" in str(failure)
        )
        if raised:
            out.append(
                finding(
                    "batchnorm-batch-of-one",
                    "error",
                    Location(path),
                    f"{path} (BatchNorm) in training mode gets a batch of one with one value per channel: "
                    "the forward raises 'Expected more than 1 value per channel when training'",
                    None,
                )
            )
        else:
            out.append(
                finding(
                    "batchnorm-batch-of-one",
                    "warning",
                    Location(path),
                    f"{path} (BatchNorm) in training mode gets a batch of one: it normalises with that "
                    "one example's statistics (instance normalisation) and updates its running "
                    "statistics from it",
                    None,
                )
            )
    return out


def _created_findings(watch: Watch, model: nn.Module) -> list[Finding]:
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    out: list[Finding] = []
    own = {id(t) for t in [*model.parameters(), *model.buffers()]}
    in_created: set[int] = set()
    done: set[tuple[str, str]] = set()
    for path, module in watch.created_modules:
        in_created.update(id(p) for p in module.parameters())
        fresh = [m for m in module.modules() if id(m) not in watch.known]
        new_state = [t for t in (*module.parameters(), *module.buffers()) if id(t) not in own]
        moded = [m for m in fresh if isinstance(m, _DropoutNd | _BatchNorm)]
        if not new_state and not moded and len(fresh) == 1 and any(True for _ in module.children()):
            continue  # a container of the model's own modules (a ModuleList slice): nothing new
        kind = type(module).__name__
        if (path, kind) in done:
            continue
        done.add((path, kind))
        where = Location(path)
        owner = path or "<root>"
        if new_state:
            out.append(
                finding(
                    "module-created-in-forward",
                    "error",
                    where,
                    f"{owner}'s forward builds an nn.{kind} on every call: new random weights each "
                    "time, never trained, never saved",
                    None,
                )
            )
        elif moded:
            out.append(
                finding(
                    "module-created-in-forward",
                    "warning",
                    where,
                    f"{owner}'s forward builds an nn.{kind} on every call: it is always in training "
                    "mode, whatever model.eval() says",
                    None,
                )
            )
        else:
            out.append(
                finding(
                    "module-created-in-forward",
                    "info",
                    where,
                    f"{owner}'s forward builds a stateless {kind} on every call: harmless, but hooks "
                    "and print(model) do not see it",
                    None,
                )
            )
    params = {id(p) for p in model.parameters()}
    for path, p in watch.created_params:
        if id(p) in in_created or id(p) in params or (path, "Parameter") in done:
            continue
        done.add((path, "Parameter"))
        out.append(
            finding(
                "module-created-in-forward",
                "error",
                Location(path),
                f"{path or '<root>'}'s forward builds an nn.Parameter {tuple(p.shape)} on every call: "
                "random each time, never trained, never saved",
                "create the Parameter once in __init__",
            )
        )
    return out


def _bypass_findings(watch: Watch) -> list[Finding]:
    return [
        finding(
            "forward-bypasses-call",
            "warning",
            Location(watch.known[key]),
            f"{watch.known[key]}.forward(...) ran {n} time(s) without going through the module's __call__: "
            "its hooks (and any wrapper's) never fired",
            f"call {watch.known[key]}(...) instead of .forward(...)",
        )
        for key, n in watch.bypassed.items()
    ]


def _probability_findings(watch: Watch, output: Any, context: str) -> list[Finding]:
    import torch

    t = _primary(output)
    if t is None or not t.is_floating_point() or t.dim() < 2 or t.shape[-1] < 2:
        return []
    grad_fn = type(t.grad_fn).__name__ if t.grad_fn is not None else ""
    x = t.detach().float()
    path = watch.producer.get(id(t), (None, ""))[1]
    where = Location(path)
    rows = x.reshape(-1, x.shape[-1])
    sums_one = bool(torch.allclose(rows.sum(-1), torch.ones(rows.shape[0]), atol=1e-4))
    if grad_fn.startswith("SoftmaxBackward") or (sums_one and bool((rows >= 0).all())):
        severity: Any = "warning" if context == "training" else "info"
        return [
            finding(
                "probabilities-into-cross-entropy",
                severity,
                where,
                f"the model's output {tuple(t.shape)} is probabilities (rows sum to 1"
                f"{', from a softmax' if grad_fn.startswith('Softmax') else ''}): nn.CrossEntropyLoss "
                "expects logits and would apply softmax twice",
                None,
            )
        ]
    if grad_fn.startswith("LogSoftmaxBackward"):
        return [
            finding(
                "probabilities-into-cross-entropy",
                "info",
                where,
                f"the model's output {tuple(t.shape)} is log-probabilities: right for NLLLoss "
                "(CrossEntropyLoss of them equals that of the logits)",
                "none needed for NLLLoss",
            )
        ]
    if grad_fn.startswith("SigmoidBackward"):
        return [
            finding(
                "probabilities-into-cross-entropy",
                "info",
                where,
                f"the model's output {tuple(t.shape)} is sigmoids: right for BCELoss, not for "
                "CrossEntropyLoss or BCEWithLogitsLoss",
                "use BCEWithLogitsLoss on the logits",
            )
        ]
    return []


def _primary(output: Any) -> torch.Tensor | None:
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]  # type: ignore[no-any-return]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _relu_findings(watch: Watch) -> list[Finding]:
    out = []
    for path, alive in watch.alive.items():
        examples = watch.examples.get(path, 0)
        if examples < MIN_EXAMPLES_FOR_DEAD:
            continue
        dead = int((~alive).sum())
        if dead and dead >= DEAD_FRACTION * alive.numel():
            out.append(
                finding(
                    "dead-relu-at-init",
                    "warning",
                    Location(path),
                    f"{dead} of {alive.numel()} units of {path} are zero for all {examples} examples: "
                    "no gradient flows through them",
                    None,
                )
            )
    return out


def _scale_findings(watch: Watch, model: nn.Module) -> list[Finding]:
    import math

    chains: dict[str, list[float]] = {}
    by_path = dict(model.named_modules())
    for path, container in by_path.items():
        stds = [watch.first_std[id(c)] for c in container.children() if id(c) in watch.first_std]
        if len(stds) >= MIN_CHAIN:
            chains[path] = stds
    out = []
    for path, stds in chains.items():
        first, last = stds[0], stds[-1]
        if not (first > 0 and math.isfinite(first) and math.isfinite(last)):
            continue
        ratio = last / first if last > 0 else 0.0
        if ratio == 0.0 or abs(math.log10(ratio)) >= SCALE_ORDERS:
            way = "grows" if ratio > 1 else "shrinks"
            out.append(
                finding(
                    "activation-scale-with-depth",
                    "warning",
                    Location(path),
                    f"the activation std {way} from {first:.3g} to {last:.3g} ({ratio:.3g}×) over the "
                    f"{len(stds)} blocks of {path or '<root>'}",
                    None,
                )
            )
    return out


def _unused_findings(model: nn.Module, watch: Watch) -> list[Finding]:
    out = []
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if p.grad is not None:
            continue
        path, _, attr = name.rpartition(".")
        owner = modules.get(path)
        ran = owner is not None and (
            watch.calls.get(id(owner), 0) > 0 or watch.bypassed.get(id(owner), 0) > 0
        )
        where = Location(path, attr)
        if not p.requires_grad:
            if not ran:
                out.append(
                    finding(
                        "unused-parameter",
                        "info",
                        where,
                        "frozen (requires_grad=False), and its module never ran",
                        "none needed",
                        detail="frozen",
                    )
                )
            continue
        why = "its output did not reach the loss" if ran else "its module never ran"
        out.append(
            finding(
                "unused-parameter",
                "warning",
                where,
                f"no gradient after backward: {why}; DistributedDataParallel would stop with "
                "'parameters that were not used in producing loss'",
                None,
                detail="output-unused" if ran else "never-ran",
            )
        )
    return out
