"""The doctor corpus validates itself with torch alone: every planted model has its mistake, every twin
does not, every near-miss is what its note says, every clean architecture runs forward and backward.

No modinspect here: these are the ground truths doctor's tests (issue 24) will be checked against.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

import doctor_corpus as corpus
from doctor_corpus import (
    CHECKS,
    CLEAN_MODELS,
    NEAR_MISSES,
    PLANTED,
    PLANTED_CHECKPOINTS,
    SEVERITIES,
    Batch,
    CleanModel,
    NearMiss,
    Planted,
    PlantedCheckpoint,
    StateDict,
    backward_loss,
)

# ---------------------------------------------------------------- helpers


def call(model: nn.Module, batch: Batch) -> Any:
    args, kwargs = batch
    return model(*args, **kwargs)


def forward_backward(model: nn.Module, batch: Batch) -> Any:
    out = call(model, batch)
    backward_loss(out).backward()
    return out


def twice_in_eval(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Two no-grad calls on one input, in the model's current mode."""
    with torch.no_grad():
        return call(model, batch), call(model, batch)


def as_float64(batch: Batch) -> Batch:
    def cast(t: Any) -> Any:
        return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    args, kwargs = batch
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def runs_in_float64(model: nn.Module, batch: Batch) -> bool:
    """model.double() and a float64 input: True when the forward works end to end in float64."""
    model.double()
    try:
        out = call(model, as_float64(batch))
    except RuntimeError as exc:
        assert "dtype" in str(exc) or "Double" in str(exc) or "Float" in str(exc), exc
        return False
    return bool(out.dtype == torch.float64)


def stateless(module: nn.Module) -> bool:
    """No parameter, no buffer, and no behaviour that its training flag switches."""
    has_state = [*module.parameters(), *module.buffers()]
    return not has_state and not isinstance(module, _DropoutNd | _BatchNorm)


def stored_ptrs(model: nn.Module) -> set[int]:
    return {t.data_ptr() for t in model.state_dict().values()}


def owner(model: nn.Module, case: Planted | NearMiss, index: int = 0) -> nn.Module:
    return model.get_submodule(case.where[index].module) if isinstance(case, Planted) else model


@contextmanager
def foreign_modules(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Modules that run (through __call__) during the block but are not part of `model`."""
    known = {id(m) for m in model.modules()}
    ran: list[nn.Module] = []

    def hook(module: nn.Module, args: Any) -> None:
        if id(module) not in known:
            ran.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield ran
    finally:
        handle.remove()


def graph_leaves(out: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors (AccumulateGrad variables) the output's backward graph reaches."""
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def function_nodes(out: torch.Tensor) -> list[Any]:
    """The backward nodes of custom autograd Functions (`<Name>Backward`, with `_forward_cls`)."""
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "_forward_cls"):
            found.append(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return found


@contextmanager
def registrations() -> Iterator[Counter[tuple[int, str]]]:
    """(id of the parent module, attribute) -> how many times a module was registered there."""
    counts: Counter[tuple[int, str]] = Counter()

    def hook(parent: nn.Module, name: str, child: nn.Module) -> None:
        counts[(id(parent), name)] += 1

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def numerical_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Central differences in float64, one input element at a time: (outputs, inputs)."""
    x = x.detach()
    cols = []
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        step = step.view_as(x)
        with torch.no_grad():
            cols.append(((fn(x + step) - fn(x - step)) / (2 * eps)).reshape(-1))
    return torch.stack(cols, dim=1)


def analytic_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """What the Function's backward gives: one vector-Jacobian product per output element."""
    x = x.detach().requires_grad_(True)
    out = fn(x).reshape(-1)
    rows = [
        torch.autograd.grad(out[i], x, retain_graph=True)[0].reshape(-1) for i in range(out.numel())
    ]
    return torch.stack(rows)


def function_layer(model: nn.Module, case: Planted) -> corpus.FunctionLayer:
    layer = model.get_submodule(case.where[0].module)
    assert isinstance(layer, corpus.FunctionLayer)
    return layer


def small_float64() -> torch.Tensor:
    return torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8


def sgd_steps(model: nn.Module, batch: Batch, steps: int, targets: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(call(model, batch), targets).backward()
        opt.step()


# ---------------------------------------------------------------- the corpus's own shape


def test_every_check_has_a_planted_case_and_every_case_a_known_check() -> None:
    planted = {c.check for c in PLANTED} | {c.check for c in PLANTED_CHECKPOINTS}
    assert planted == set(CHECKS)
    assert {n.check for n in NEAR_MISSES} <= set(CHECKS)
    planted_cases: tuple[Planted | PlantedCheckpoint, ...] = (*PLANTED, *PLANTED_CHECKPOINTS)
    ids = [c.case for c in (*planted_cases, *NEAR_MISSES)]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for c in planted_cases:
        assert c.case.startswith(c.check + "/") and c.severity in SEVERITIES and c.where, c.case
    for n in NEAR_MISSES:
        assert n.case.startswith(n.check + "/") and n.at_most in (None, *SEVERITIES), n.case
    assert set(PROOFS) == {c.check for c in PLANTED}
    assert set(CHECKPOINT_PROOFS) == {c.check for c in PLANTED_CHECKPOINTS}
    assert set(NEAR_PROOFS) == {n.case for n in NEAR_MISSES}


def test_the_only_intended_case_is_the_gradient_reversal_layer() -> None:
    intended = [c for c in PLANTED if c.intended]
    assert [c.case for c in intended] == ["autograd-function-wrong-backward/gradient-reversal"]
    assert intended[0].multiple == -0.1 and intended[0].where[0].function == "GradReverse"


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_builders_return_fresh_equal_models(case: Planted) -> None:
    for build in (case.planted, case.twin):
        a, b = build(), build()
        assert a is not b
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not set(map(id, a.parameters())) & set(map(id, b.parameters()))
    assert case.example_input()[0][0] is not case.example_input()[0][0]


# ---------------------------------------------------------------- proofs on live modules, one per check


def prove_unregistered_container(case: Planted) -> None:
    planted, twin, batch = case.planted(), case.twin(), case.example_input()
    where = case.where[0]
    held = getattr(owner(planted, case), where.attribute or "")
    assert type(held) in (list, dict, tuple)
    items = list(held.values()) if isinstance(held, dict) else list(held)
    tensors = [
        t
        for item in items
        for t in ([*item.parameters()] if isinstance(item, nn.Module) else [item])
    ]
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors)
    # Nothing in the plain container is saved, counted or trained ...
    assert not {t.data_ptr() for t in tensors} & stored_ptrs(planted)
    assert not {id(t) for t in tensors} & {id(p) for p in planted.parameters()}
    stored = sum(t.numel() for t in planted.state_dict().values())
    assert sum(t.numel() for t in twin.state_dict().values()) == stored + sum(
        t.numel() for t in tensors
    )
    assert not isinstance(
        getattr(owner(twin, case), where.attribute or "", None), list | dict | tuple
    )
    # ... nor moved by .to(): the planted model breaks in float64, the twin works.
    assert not runs_in_float64(planted, batch)
    assert runs_in_float64(twin, batch)


def prove_tensor_attribute(case: Planted) -> None:
    planted, twin, batch = case.planted(), case.twin(), case.example_input()
    name = case.where[0].attribute or ""
    tensor = getattr(planted, name)
    assert type(tensor) is torch.Tensor and name not in dict(planted.named_buffers())
    assert name not in planted.state_dict() and name in twin.state_dict()
    planted.double()
    assert getattr(planted, name).dtype == torch.float32  # .to() does not move it
    assert not runs_in_float64(planted, batch)
    assert runs_in_float64(twin, batch) and twin.get_buffer(name).dtype == torch.float64


def prove_global_tensor_in_forward(case: Planted) -> None:
    planted, twin, batch = case.planted(), case.twin(), case.example_input()
    name = case.where[0].attribute or ""
    forward = type(planted).forward
    assert name in forward.__code__.co_names and isinstance(forward.__globals__[name], torch.Tensor)
    ptr = forward.__globals__[name].data_ptr()
    assert ptr not in stored_ptrs(planted) and ptr not in stored_ptrs(twin)  # the twin owns a copy
    assert torch.equal(twin.get_buffer("projection"), forward.__globals__[name])
    assert not runs_in_float64(planted, batch)
    assert runs_in_float64(twin, batch)


def prove_module_created_in_forward(case: Planted) -> None:
    batch = case.example_input()
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        model.eval()
        with foreign_modules(model) as ran:
            first, second = twice_in_eval(model, batch)
        with torch.enable_grad():
            leaves = graph_leaves(call(model, batch))
        foreign_leaves = [t for t in leaves if id(t) not in {id(p) for p in model.parameters()}]
        # A module or a Parameter that the model does not own took part, and the output changes per call.
        assert bool(ran or foreign_leaves) is mistake, (ran, foreign_leaves)
        assert (not torch.equal(first, second)) is mistake


def prove_module_assigned_twice(case: Planted) -> None:
    where = case.where[0]
    for build, mistake in ((case.planted, True), (case.twin, False)):
        with registrations() as counts:
            model = build()
        parent = id(model.get_submodule(where.module))
        assert (counts[(parent, where.attribute or "")] == 2) is mistake
        assert max(counts.values()) == (2 if mistake else 1)
    # The first Linear was built (and consumed random numbers) and is gone: one Linear less than the twin.
    linears = [
        sum(isinstance(m, nn.Linear) for m in b().modules()) for b in (case.planted, case.twin)
    ]
    assert linears[0] == linears[1] - 1


def prove_unused_parameter(case: Planted) -> None:
    batch = case.example_input()
    module = case.where[0].module
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        calls: list[int] = []
        model.get_submodule(module).register_forward_hook(lambda *a, calls=calls: calls.append(1))
        forward_backward(model, batch)
        params = dict(model.named_parameters())
        assert all((params[w.key].grad is None) is mistake for w in case.where)
        assert all(
            p.grad is not None for n, p in params.items() if n not in {w.key for w in case.where}
        )
        ran = bool(calls)
        assert ran is (not mistake or case.detail == "output-unused")


def prove_param_not_in_optimizer(case: Planted) -> None:
    assert case.optimizer is not None and case.twin_optimizer is not None
    batch = case.example_input()
    for model, make, mistake in (
        (case.planted(), case.optimizer, True),
        (case.twin(), case.twin_optimizer, False),
    ):
        opt = make(model)
        in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
        params = dict(model.named_parameters())
        assert all(p.requires_grad for p in params.values())
        assert all((id(params[w.key]) not in in_opt) is mistake for w in case.where)
        before = {n: p.detach().clone() for n, p in params.items()}
        forward_backward(model, batch)
        opt.step()
        for w in case.where:  # it has a gradient, and the step leaves it where it was
            grad = params[w.key].grad
            assert grad is not None and grad.abs().sum() > 0
            assert torch.equal(params[w.key], before[w.key]) is mistake
        assert all(not torch.equal(p, before[n]) for n, p in params.items() if id(p) in in_opt)


def prove_probabilities_into_cross_entropy(case: Planted) -> None:
    batch = case.example_input()
    probs, logits = call(case.planted(), batch), call(case.twin(), batch)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(probs.shape[0]))
    assert type(probs.grad_fn).__name__ == "SoftmaxBackward0"
    assert (logits < 0).any() and not torch.allclose(logits.sum(-1), torch.ones(logits.shape[0]))
    # Same weights: the planted output is the softmax of the twin's logits, so CrossEntropyLoss applies
    # softmax twice and gets another loss.
    assert torch.allclose(probs, F.softmax(logits, dim=-1))
    target = torch.arange(probs.shape[0]) % probs.shape[1]
    assert not torch.allclose(F.cross_entropy(probs, target), F.cross_entropy(logits, target))
    if case.where[0].module:
        assert isinstance(case.planted().get_submodule(case.where[0].module), nn.Softmax)


def prove_forward_bypasses_call(case: Planted) -> None:
    batch = case.example_input()
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        sub = model.get_submodule(case.where[0].module)
        fired: list[str] = []
        sub.register_forward_pre_hook(lambda *a, fired=fired: fired.append("pre"))
        sub.register_forward_hook(lambda *a, fired=fired: fired.append("post"))
        forward_backward(model, batch)
        assert fired == ([] if mistake else ["pre", "post"])
        assert all(p.grad is not None for p in sub.parameters())  # its forward did run


def prove_train_mode_at_inference(case: Planted) -> None:
    assert case.context == "inference"
    batch = case.example_input()
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        assert model.get_submodule(case.where[0].module).training is mistake
        first, second = twice_in_eval(model, batch)
        assert (not torch.equal(first, second)) is mistake


def prove_mixed_train_eval(case: Planted) -> None:
    assert case.context == "training"
    planted, twin = case.planted(), case.twin()
    assert {m.training for m in planted.modules()} == {True, False}
    assert planted.training and not planted.get_submodule(case.where[0].module).training
    assert {m.training for m in twin.modules()} == {True}
    stage = planted.get_submodule(case.where[0].module)
    h = torch.randn(6, 16)
    assert torch.equal(stage(h), stage(h))  # its Dropout does not drop while the model trains


def prove_batchnorm_batch_of_one(case: Planted) -> None:
    batch = case.example_input()
    assert batch[0][0].shape[0] == 1
    planted, twin = case.planted(), case.twin()
    bn = planted.get_submodule(case.where[0].module)
    assert isinstance(bn, _BatchNorm) and bn.training
    assert not any(isinstance(m, _BatchNorm) for m in twin.modules())
    forward_backward(twin, batch)
    if case.severity == "error":
        with pytest.raises(
            ValueError, match="Expected more than 1 value per channel when training"
        ):
            call(planted, batch)
        return
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    bn.register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
    call(planted, batch)
    ((x, out),) = seen
    # The "batch" statistics are one example's: BatchNorm computed instance normalisation.
    assert torch.allclose(out, F.instance_norm(x, eps=bn.eps), atol=1e-5)


def prove_autograd_function_wrong_backward(case: Planted) -> None:
    x = small_float64()
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        out = call(model, case.example_input())
        nodes = function_nodes(out)
        layer = function_layer(model, case)
        assert [n._forward_cls for n in nodes] == [layer.function]
        assert (type(nodes[0]).__name__ == f"{case.where[0].function}Backward") is mistake

        def fn(t: torch.Tensor, layer: corpus.FunctionLayer = layer) -> torch.Tensor:
            return layer.call_function(t)

        for fast in (True, False):
            ok = torch.autograd.gradcheck(
                fn, (x.clone().requires_grad_(),), fast_mode=fast, raise_exception=False
            )
            assert ok is (not mistake)
        analytic, numerical = analytic_jacobian(fn, x), numerical_jacobian(fn, x)
        if not mistake:
            assert torch.allclose(analytic, numerical, atol=1e-6)
        elif case.multiple is not None:
            assert torch.allclose(analytic, case.multiple * numerical, atol=1e-6)
        else:  # no constant explains it: the best least-squares multiple still leaves a large residual
            best = (analytic * numerical).sum() / (numerical * numerical).sum()
            assert (analytic - best * numerical).norm() > 0.1 * analytic.norm()


def prove_autograd_function_gradient_count(case: Planted) -> None:
    batch = case.example_input()
    planted = case.planted()
    assert [n._forward_cls.__name__ for n in function_nodes(call(planted, batch))] == [
        case.where[0].function
    ]
    with pytest.raises(RuntimeError, match="returned an incorrect number of gradients"):
        forward_backward(planted, batch)
    forward_backward(twin := case.twin(), batch)
    assert all(p.grad is not None for p in twin.parameters())


def prove_autograd_function_ctx_tensor(case: Planted) -> None:
    batch, name = case.example_input(), case.where[0].attribute or ""
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        (node,) = function_nodes(call(model, batch))
        on_ctx = {k for k, v in vars(node).items() if isinstance(v, torch.Tensor)}
        assert on_ctx == ({name} if mistake else set())
        assert len(node.saved_tensors) == (0 if mistake else 1)
        # Changing the input in place after forward: save_for_backward's version check catches it, a
        # tensor on ctx silently gives the gradient at the changed value.
        function = function_layer(model, case).function
        base = torch.randn(5, requires_grad=True)
        a = base * 1.0
        y = function.apply(a)
        a.mul_(2.0)
        if mistake:
            y.sum().backward()
            assert base.grad is not None
            assert not torch.allclose(base.grad, 3 * base.detach() ** 2)
            assert torch.allclose(base.grad, 3 * (2 * base.detach()) ** 2)
        else:
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                y.sum().backward()


def prove_constant_init(case: Planted) -> None:
    batch = case.example_input()
    targets = torch.randn(batch[0][0].shape[0], 2, generator=torch.Generator().manual_seed(7))
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        weights = [model.get_parameter(w.key) for w in case.where]
        assert all((w.unique().numel() == 1 and bool(w.ne(0).all())) is mistake for w in weights)
        sgd_steps(model, batch, 5, targets)
        hidden = [
            model.get_parameter(w.key) for w in case.where[:-1]
        ]  # fc1, fc2: rows are hidden units
        # Five steps on random targets later, the hidden units are still copies of each other.
        assert all(torch.allclose(w, w[:1].expand_as(w)) is mistake for w in hidden)


def layer_output_stds(model: nn.Module, batch: Batch) -> list[float]:
    stds: list[float] = []
    handles = [
        m.register_forward_hook(lambda m, a, out: stds.append(float(out.std())))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        call(model, batch)
    for h in handles:
        h.remove()
    return stds


def prove_activation_scale_with_depth(case: Planted) -> None:
    batch = case.example_input()
    planted = layer_output_stds(case.planted(), batch)
    twin = layer_output_stds(case.twin(), batch)
    assert len(planted) == len(twin) == 8
    ratio, twin_ratio = planted[-1] / planted[0], twin[-1] / twin[0]
    assert (ratio > 1e3) if case.case.endswith("explodes") else (ratio < 1e-3), ratio
    assert 0.1 < twin_ratio < 10, twin_ratio


def prove_dead_relu_at_init(case: Planted) -> None:
    batch = case.example_input()
    for model, mistake in ((case.planted(), True), (case.twin(), False)):
        outs: list[torch.Tensor] = []
        model.get_submodule(case.where[0].module).register_forward_hook(
            lambda m, a, out, outs=outs: outs.append(out)
        )
        forward_backward(model, batch)
        dead_units = int((~(outs[0] > 0).any(dim=0)).sum())  # units that are zero for every example
        assert dead_units == (outs[0].shape[1] if mistake else 0), dead_units
        grad = model.get_parameter("fc.weight").grad
        assert grad is not None and (
            bool(grad.abs().sum() == 0) is mistake
        )  # nothing flows back through a dead ReLU


PROOFS: dict[str, Callable[[Planted], None]] = {
    "unregistered-container": prove_unregistered_container,
    "tensor-attribute": prove_tensor_attribute,
    "global-tensor-in-forward": prove_global_tensor_in_forward,
    "module-created-in-forward": prove_module_created_in_forward,
    "module-assigned-twice": prove_module_assigned_twice,
    "unused-parameter": prove_unused_parameter,
    "param-not-in-optimizer": prove_param_not_in_optimizer,
    "probabilities-into-cross-entropy": prove_probabilities_into_cross_entropy,
    "forward-bypasses-call": prove_forward_bypasses_call,
    "train-mode-at-inference": prove_train_mode_at_inference,
    "mixed-train-eval": prove_mixed_train_eval,
    "batchnorm-batch-of-one": prove_batchnorm_batch_of_one,
    "autograd-function-wrong-backward": prove_autograd_function_wrong_backward,
    "autograd-function-gradient-count": prove_autograd_function_gradient_count,
    "autograd-function-ctx-tensor": prove_autograd_function_ctx_tensor,
    "constant-init": prove_constant_init,
    "activation-scale-with-depth": prove_activation_scale_with_depth,
    "dead-relu-at-init": prove_dead_relu_at_init,
}


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_planted_has_its_mistake_and_twin_does_not(case: Planted) -> None:
    PROOFS[case.check](case)


# ---------------------------------------------------------------- proofs on checkpoints


def prove_nonfinite(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    key = case.where[0].key
    check = torch.isnan if case.case.endswith("nan") else torch.isinf
    assert int(check(planted[key]).sum()) == 1
    assert all(torch.isfinite(t).all() for k, t in planted.items() if k != key)
    assert all(torch.isfinite(t).all() for t in twin.values())
    layer = nn.Linear(8, 4)
    layer.load_state_dict({k.removeprefix("fc."): v for k, v in planted.items()})
    assert not torch.isfinite(layer(torch.randn(3, 8))).all()


def prove_constant_tensor(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    key = case.where[0].key
    assert planted[key].dim() >= 2 and planted[key].unique().numel() == 1
    assert all(t.unique().numel() > 1 for t in twin.values() if t.dim() >= 2)
    layer = nn.Linear(8, 4)
    layer.load_state_dict(
        {k.removeprefix("encoder.fc."): v for k, v in planted.items() if k.startswith("encoder.")}
    )
    out = layer(torch.randn(3, 8)) - layer.bias
    assert torch.allclose(
        out, out[:, :1].expand_as(out)
    )  # every output unit computes the same thing


def _bn_eval(sd: StateDict) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(4)
    bn.load_state_dict({k.removeprefix("bn."): v for k, v in sd.items()})
    return bn.eval()


def prove_batchnorm_stats(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    x = torch.randn(2, 4, 3, 3)
    assert int(twin["bn.num_batches_tracked"]) == 3 and (twin["bn.running_var"] > 0).all()
    twin_out = _bn_eval(twin)(x)
    assert torch.isfinite(twin_out).all() and not torch.allclose(twin_out, x, atol=1e-3)
    out = _bn_eval(planted)(x)
    if case.severity == "error":
        assert (planted["bn.running_var"] <= 0).any()
        assert torch.isnan(out).any()  # a negative variance has no square root
    else:
        assert int(planted["bn.num_batches_tracked"]) == 0
        assert torch.allclose(out, x / (1 + 1e-5) ** 0.5)  # mean 0, variance 1: normalises nothing


def prove_tied_copies(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    copy, original = planted["lm_head.weight"], planted["embed.weight"]
    assert torch.equal(copy, original) and copy.data_ptr() != original.data_ptr()
    assert twin["lm_head.weight"].data_ptr() == twin["embed.weight"].data_ptr()

    def saved_size(sd: StateDict) -> int:
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.tell()

    assert saved_size(planted) - saved_size(twin) >= copy.numel() * copy.element_size()


def prove_mixed_dtypes(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    prefix = case.where[0].module + "."
    dtypes = {t.dtype for k, t in planted.items() if k.startswith(prefix)}
    assert dtypes == {torch.float16, torch.float32}
    assert {t.dtype for t in twin.values()} == {torch.float16}
    x = torch.randn(3, 8, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="dtype"):
        F.linear(x, planted["fc.weight"], planted["fc.bias"])
    assert F.linear(x, twin["fc.weight"], twin["fc.bias"]).dtype == torch.float16


def prove_fp16_near_overflow(case: PlantedCheckpoint, planted: StateDict, twin: StateDict) -> None:
    t = planted[case.where[0].key]
    assert t.dtype == torch.float16 and t.abs().max() >= torch.finfo(torch.float16).max / 2
    assert torch.isinf(t * 2).any()
    assert all(torch.isfinite(v * 2).all() for v in twin.values())


CHECKPOINT_PROOFS: dict[str, Callable[[PlantedCheckpoint, StateDict, StateDict], None]] = {
    "nonfinite-weights": prove_nonfinite,
    "constant-tensor": prove_constant_tensor,
    "batchnorm-stats-untrained": prove_batchnorm_stats,
    "tied-weights-stored-twice": prove_tied_copies,
    "mixed-dtypes-in-module": prove_mixed_dtypes,
    "fp16-near-overflow": prove_fp16_near_overflow,
}


@pytest.mark.parametrize("case", PLANTED_CHECKPOINTS, ids=lambda c: c.case)
def test_planted_checkpoint_has_its_mistake_and_twin_does_not(case: PlantedCheckpoint) -> None:
    planted, twin = case.planted(), case.twin()
    assert planted is not case.planted()  # fresh each call
    assert all(w.key in planted for w in case.where if w.attribute)
    CHECKPOINT_PROOFS[case.check](case, planted, twin)


# ---------------------------------------------------------------- near-misses: what their notes say


def _module(near: NearMiss) -> tuple[nn.Module, Batch]:
    model = near.build()
    assert isinstance(model, nn.Module) and near.example_input is not None
    return model, near.example_input()


def _state(near: NearMiss) -> StateDict:
    sd = near.build()
    assert isinstance(sd, dict)
    return sd


def near_config_values(near: NearMiss) -> None:
    model, batch = _module(near)
    modules = {id(m) for m in model.modules()}
    containers = [
        v
        for k, v in vars(model).items()
        if not k.startswith("_") and isinstance(v, list | tuple | dict)
    ]
    assert len(containers) == 5  # torch.Size is a tuple too
    for held in containers:
        for item in held.values() if isinstance(held, dict) else held:
            assert isinstance(item, int | str | float) or id(item) in modules, item
    assert runs_in_float64(model, batch)


def near_stateless_activations(near: NearMiss) -> None:
    model, batch = _module(near)
    acts = vars(model)["acts"]  # a plain attribute, not one of its _modules
    assert type(acts) is list and all(stateless(m) for m in acts)
    registered = corpus.PerLayerActivations()
    # Registering them (what `registered.acts = nn.ModuleList(...)` runs, over the attribute declared a
    # list) would add nothing to save or train.
    registered.__setattr__("acts", nn.ModuleList(registered.acts))
    assert model.state_dict().keys() == registered.state_dict().keys()
    assert runs_in_float64(model, batch)


def near_non_persistent_buffer(near: NearMiss) -> None:
    model, batch = _module(near)
    assert "mask" in dict(model.named_buffers()) and "mask" not in model.state_dict()
    assert runs_in_float64(model, batch) and model.get_buffer("mask").dtype == torch.float64


def near_metadata(near: NearMiss) -> None:
    model, _ = _module(near)
    assert isinstance(model.shape, torch.Size) and isinstance(model.dtype, torch.dtype)
    assert not [k for k, v in vars(model).items() if isinstance(v, torch.Tensor)]


def near_lazy_linear(near: NearMiss) -> None:
    model, batch = _module(near)
    model.eval()
    call(model, batch)  # materialises fc
    count = sum(p.numel() for p in model.parameters())
    with foreign_modules(model) as ran:
        first, second = twice_in_eval(model, batch)
    assert not ran and torch.equal(first, second)
    assert sum(p.numel() for p in model.parameters()) == count == 4 * 8 + 8 + 8 * 2 + 2


def near_stateless_relu(near: NearMiss) -> None:
    model, batch = _module(near)
    model.eval()
    with foreign_modules(model) as ran:
        first, second = twice_in_eval(model, batch)
    assert torch.equal(first, second)
    assert [type(m) for m in ran] == [
        nn.ReLU,
        nn.ReLU,
    ]  # built per call (the info is true), stateless
    assert not [*ran[0].parameters(), *ran[0].buffers()]


def near_alias(near: NearMiss) -> None:
    with registrations() as counts:
        model = near.build()
    assert isinstance(model, nn.Module) and max(counts.values()) == 1
    assert model.encoder is model.decoder_input


def near_wrapped(near: NearMiss) -> None:
    with registrations() as counts:
        model = near.build()
    assert (
        isinstance(model, nn.Module) and counts[(id(model), "fc")] == 2
    )  # assigned twice in __init__ ...
    assert (
        sum(isinstance(m, nn.Linear) for m in model.modules()) == 2
    )  # ... and no Linear discarded
    assert hasattr(model.fc, "parametrizations") and near.example_input is not None
    forward_backward(model, near.example_input())


def near_tied_weight(near: NearMiss) -> None:
    with registrations() as counts:
        model = near.build()
    assert isinstance(model, nn.Module) and max(counts.values()) == 1
    assert model.get_parameter("head.weight") is model.get_parameter("embed.weight")
    assert near.example_input is not None
    forward_backward(model, near.example_input())


def near_head_replaced(near: NearMiss) -> None:
    with registrations() as counts:
        corpus.HeadReplacedAfterInit()  # __init__ alone registers each attribute once
    assert max(counts.values()) == 1
    model, batch = _module(near)
    head = model.get_submodule("head")
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert call(model, batch).shape == (6, 3)


def near_frozen_unused(near: NearMiss) -> None:
    model, batch = _module(near)
    forward_backward(model, batch)
    for name, p in model.named_parameters():
        assert (p.grad is None) is name.startswith("aux.")
        assert p.requires_grad is not name.startswith("aux.")


def near_frozen_backbone(near: NearMiss) -> None:
    model, _ = _module(near)
    assert near.optimizer is not None
    opt = near.optimizer(model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt != {id(p) for p in model.parameters()}
    assert not any(p.requires_grad for p in model.get_submodule("backbone").parameters())


def near_no_decay_groups(near: NearMiss) -> None:
    model, _ = _module(near)
    assert near.optimizer is not None
    opt = near.optimizer(model)
    assert len(opt.param_groups) == 2
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(
        map(id, model.parameters())
    )


def near_log_softmax(near: NearMiss) -> None:
    model, batch = _module(near)
    log_probs = call(model, batch)
    logits = call(corpus._build(corpus.Classifier, "logits")(), batch)
    assert torch.allclose(
        log_probs.exp().sum(-1), torch.ones(6)
    )  # log-probabilities: the info is true
    target = torch.arange(6) % 5
    assert torch.allclose(
        F.cross_entropy(log_probs, target), F.cross_entropy(logits, target)
    )  # harmless


def near_sigmoid(near: NearMiss) -> None:
    model, batch = _module(near)
    out = call(model, batch)
    assert ((out > 0) & (out < 1)).all() and not torch.allclose(
        out.sum(-1), torch.ones(6), atol=0.05
    )


def near_softplus(near: NearMiss) -> None:
    model, batch = _module(near)
    out = call(model, batch)
    assert (out >= 0).all() and not torch.allclose(out.sum(-1), torch.ones(6), atol=0.05)


def near_super_forward(near: NearMiss) -> None:
    model, batch = _module(near)
    fired: list[nn.Module] = []
    for m in model.modules():
        m.register_forward_hook(lambda m, a, out: fired.append(m))
    forward_backward(model, batch)
    assert sorted(map(id, fired)) == sorted(
        map(id, model.modules())
    )  # each ran once, through __call__


def near_no_dropout(near: NearMiss) -> None:
    model, batch = _module(near)
    assert near.context == "inference" and model.training
    first, second = twice_in_eval(model, batch)
    with torch.no_grad():
        evaluated = call(model.eval(), batch)
    assert torch.equal(first, second) and torch.equal(first, evaluated)


def near_frozen_bn_backbone(near: NearMiss) -> None:
    model, batch = _module(near)
    assert {m.training for m in model.modules()} == {True, False}
    assert all(
        not p.requires_grad for m in model.modules() if not m.training for p in m.parameters()
    )
    running_mean = model.get_buffer("backbone.1.running_mean")
    mean = running_mean.clone()
    forward_backward(model, batch)
    assert torch.equal(running_mean, mean)  # the statistics stay fixed, as intended


def near_bn_eval(near: NearMiss) -> None:
    model, batch = _module(near)
    assert batch[0][0].shape[0] == 1 and not model.get_submodule("bn").training
    mean = model.get_buffer("bn.running_mean").clone()
    with torch.no_grad():
        out = call(model, batch)
    assert torch.isfinite(out).all() and torch.equal(model.get_buffer("bn.running_mean"), mean)


def near_zero_init_residual(near: NearMiss) -> None:
    model, batch = _module(near)
    assert not model.get_parameter("down.weight").any() and torch.equal(
        model.get_parameter("norm.weight"), torch.ones(8)
    )
    with torch.no_grad():  # the branch starts as the identity
        h = model.get_submodule("inp")(batch[0][0])
        assert torch.equal(call(model, batch), model.get_submodule("head")(h))
    sgd_steps(model, batch, 1, torch.randn(6, 2, generator=torch.Generator().manual_seed(7)))
    w = model.get_parameter("down.weight")
    assert w.unique().numel() > 1 and not torch.allclose(w, w[:1].expand_as(w))  # and it learns


def near_norms_and_scalars(near: NearMiss) -> None:
    sd = _state(near)
    constant = {k for k, t in sd.items() if t.numel() == 1 or t.unique().numel() == 1}
    assert constant == {
        "fc.bias",
        "norm.weight",
        "norm.bias",
        "norm2.weight",
        "bn.num_batches_tracked",
    }
    assert all(sd[k].dim() <= 1 for k in constant)
    assert all(t.unique().numel() > 1 for t in sd.values() if t.dim() >= 2)


def near_equal_norm_weights(near: NearMiss) -> None:
    sd = _state(near)
    keys = sorted(sd)
    equal = [
        (a, b)
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if sd[a].shape == sd[b].shape and sd[a].dtype == sd[b].dtype and torch.equal(sd[a], sd[b])
    ]
    assert equal == [("norm.weight", "norm2.weight")]
    assert all(sd[a].dim() == 1 and sd[a].unique().numel() == 1 for a, _ in equal)


def near_int8_with_scale(near: NearMiss) -> None:
    sd = _state(near)
    assert sd["fc.weight"].dtype == torch.int8
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {torch.float32}
    w = sd["fc.weight"].float() * sd["fc.weight_scale"]
    assert torch.isfinite(w).all() and w.unique().numel() > 1


def near_bn_counter(near: NearMiss) -> None:
    sd = _state(near)
    assert sd["bn.num_batches_tracked"].dtype == torch.int64
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {torch.float32}


def near_large_not_fp16(near: NearMiss) -> None:
    sd = _state(near)
    w = sd["fc.weight"]
    assert w.dtype != torch.float16 and w.abs().max() > torch.finfo(torch.float16).max
    assert torch.isfinite(w * 2).all()
    assert torch.isinf(w.half()).any()  # the same values would not fit in float16


NEAR_PROOFS: dict[str, Callable[[NearMiss], None]] = {
    "unregistered-container/config-values": near_config_values,
    "unregistered-container/stateless-activations": near_stateless_activations,
    "tensor-attribute/non-persistent-buffer": near_non_persistent_buffer,
    "tensor-attribute/metadata": near_metadata,
    "module-created-in-forward/lazy-linear": near_lazy_linear,
    "module-created-in-forward/stateless-relu": near_stateless_relu,
    "module-assigned-twice/alias": near_alias,
    "module-assigned-twice/wrapped": near_wrapped,
    "module-assigned-twice/tied-weight": near_tied_weight,
    "module-assigned-twice/head-replaced-after-init": near_head_replaced,
    "unused-parameter/frozen": near_frozen_unused,
    "param-not-in-optimizer/frozen-backbone": near_frozen_backbone,
    "param-not-in-optimizer/no-decay-groups": near_no_decay_groups,
    "probabilities-into-cross-entropy/log-softmax": near_log_softmax,
    "probabilities-into-cross-entropy/sigmoid-multilabel": near_sigmoid,
    "probabilities-into-cross-entropy/softplus-regression": near_softplus,
    "forward-bypasses-call/super-forward": near_super_forward,
    "train-mode-at-inference/no-dropout-or-norm": near_no_dropout,
    "mixed-train-eval/frozen-bn-backbone": near_frozen_bn_backbone,
    "batchnorm-batch-of-one/eval": near_bn_eval,
    "constant-init/zero-init-residual": near_zero_init_residual,
    "constant-tensor/norms-and-scalars": near_norms_and_scalars,
    "tied-weights-stored-twice/equal-norm-weights": near_equal_norm_weights,
    "mixed-dtypes-in-module/int8-with-scale": near_int8_with_scale,
    "mixed-dtypes-in-module/batchnorm-counter": near_bn_counter,
    "fp16-near-overflow/bfloat16": near_large_not_fp16,
    "fp16-near-overflow/float32": near_large_not_fp16,
}


@pytest.mark.parametrize("near", NEAR_MISSES, ids=lambda n: n.case)
def test_near_miss_is_what_its_note_says(near: NearMiss) -> None:
    NEAR_PROOFS[near.case](near)


# ---------------------------------------------------------------- clean architectures


@pytest.mark.parametrize("clean", CLEAN_MODELS, ids=lambda c: c.name)
def test_clean_model_builds_and_runs_forward_and_backward(clean: CleanModel) -> None:
    if clean.needs and importlib.util.find_spec(clean.needs) is None:
        pytest.skip(f"needs {clean.needs}")
    model, batch = clean.build(), clean.example_input()
    assert {m.training for m in model.modules()} == {
        clean.context == "training"
    }  # one mode, the right one
    registered = {id(t) for t in [*model.parameters(), *model.buffers()]} | {
        id(m) for m in model.modules()
    }
    for (
        name,
        module,
    ) in model.named_modules():  # every tensor and every stateful module it holds is registered
        for attr, value in vars(module).items():
            held = (
                list(value.values())
                if isinstance(value, dict)
                else value
                if isinstance(value, list | tuple)
                else [value]
            )
            loose = [
                v
                for v in held
                if isinstance(v, torch.Tensor | nn.Module) and id(v) not in registered
            ]
            assert all(isinstance(v, nn.Module) and stateless(v) for v in loose), (
                name,
                attr,
                loose,
            )
    sd = model.state_dict()
    assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())
    assert len({t.dtype for t in sd.values() if t.is_floating_point()}) == 1
    assert not [
        k for k, t in sd.items() if t.dim() >= 2 and t.unique().numel() == 1
    ]  # no constant matrix
    forward_backward(model, batch)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not [
        n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
    ]
    model.eval()
    with foreign_modules(model) as ran:
        first, second = twice_in_eval(model, batch)
    # Real models run modules outside their tree (BERT/T5 build a CrossEntropyLoss per call, Llama keeps
    # a rotary `Func` in a plain dict): all stateless, so at most an info for them.
    assert all(stateless(m) for m in ran), ran
    first_t, second_t = (
        backward_loss(o) if not isinstance(o, torch.Tensor) else o for o in (first, second)
    )
    assert torch.isfinite(first_t).all() and torch.equal(first_t, second_t)


# ---------------------------------------------------------------- the proofs can fail


def _fails(proof: Callable[[], None]) -> bool:
    try:
        proof()
    except (Exception, pytest.fail.Exception):
        return True
    return False


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_proof_fails_with_planted_and_twin_swapped(case: Planted) -> None:
    swapped = dataclasses.replace(
        case,
        planted=case.twin,
        twin=case.planted,
        optimizer=case.twin_optimizer,
        twin_optimizer=case.optimizer,
    )
    assert _fails(lambda: PROOFS[case.check](swapped))


@pytest.mark.parametrize("case", PLANTED_CHECKPOINTS, ids=lambda c: c.case)
def test_checkpoint_proof_fails_with_planted_and_twin_swapped(case: PlantedCheckpoint) -> None:
    assert _fails(lambda: CHECKPOINT_PROOFS[case.check](case, case.twin(), case.planted()))


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_twin_passes_the_generic_checks_too(case: Planted) -> None:
    """A twin is clean beyond its own check: one mode, every trainable parameter gets a gradient, nothing
    stateful is built per call, and it runs in float64 (it owns every tensor it uses)."""
    model, batch = case.twin(), case.example_input()
    assert len({m.training for m in model.modules()}) == 1
    assert model.training is (case.context == "training")
    with foreign_modules(model) as ran:
        forward_backward(model, batch)
    assert not ran
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert runs_in_float64(model, batch)
