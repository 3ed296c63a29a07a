"""Hook hygiene: after `stats`, and after a `stats` whose forward or backward raised, the model is as it was.

No module hook (forward, forward-pre, backward, backward-pre, with or without kwargs, global ones),
no tensor hook on a parameter or buffer, parameters and buffers bitwise unchanged and still the same
objects, and `training`, `requires_grad` and `.grad` (the very tensor, with its values) restored.
Checked on every planted-fault model, in eval and train mode, with and without backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from models import BadGrad, FaultyNet, SqrtShift
from modinspect.errors import ModinspectError
from modinspect.run.stats import StatsOptions, collect_stats

MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
)


# ---------------------------------------------------------------- the planted faults


class RaisingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x + 1

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backward exploded")


class BackwardRaises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RaisingBackward.apply(x)


class ForwardRaises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward exploded")


def Net(faulty: nn.Module) -> FaultyNet:
    """Four blocks (the third carries the fault, the last ReLU is in place), a BatchNorm for buffers, a head."""
    return FaultyNet(faulty, norm=True, inplace_last=True)


def dead_relu() -> nn.Module:
    model = Net(nn.ReLU())
    with torch.no_grad():
        model.get_parameter("blocks.2.fc.bias").fill_(
            -1e4
        )  # every unit of blocks.2.act is zero for every input
    return model


def half_dead_relu() -> nn.Module:
    model = Net(nn.ReLU())
    with torch.no_grad():
        bias = model.get_parameter("blocks.2.fc.bias")
        bias[:4] = -1e4
        bias[4:] = 1e4
    return model


# name -> (model factory, error the run must raise or None)
FAULTS: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "clean": (lambda: Net(nn.Tanh()), None),
    "sqrt-of-negative": (lambda: Net(SqrtShift()), None),
    "nan-backward-function": (lambda: Net(BadGrad()), None),
    "dead-relu": (dead_relu, None),
    "half-dead-relu": (half_dead_relu, None),
    "forward-raises": (lambda: Net(ForwardRaises()), "forward exploded"),
    "backward-raises": (lambda: Net(BackwardRaises()), "backward exploded"),
}


# ---------------------------------------------------------------- the snapshot


def _bits(t: torch.Tensor) -> bytes:
    """A tensor's exact bytes (NaN == NaN, -0.0 != 0.0), whatever its dtype."""
    return bytes(t.detach().reshape(-1).contiguous().view(torch.uint8).tolist())


def _tensor_hooks(t: torch.Tensor) -> int:
    hooks = getattr(t, "_backward_hooks", None) or {}
    post = getattr(t, "_post_accumulate_grad_hooks", None) or {}
    return len(hooks) + len(post)


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "module_hooks": {
            (n, d): len(getattr(m, d, None) or {})
            for n, m in model.named_modules()
            for d in MODULE_HOOK_DICTS
        },
        "global_hooks": {d: len(getattr(module_globals, d, None) or {}) for d in GLOBAL_HOOK_DICTS},
        "tensor_hooks": {
            n: _tensor_hooks(t) for n, t in [*model.named_parameters(), *model.named_buffers()]
        },
        "params": {
            n: (id(p), p.data_ptr(), p.dtype, tuple(p.shape), _bits(p))
            for n, p in model.named_parameters()
        },
        "buffers": {n: (id(b), b.data_ptr(), _bits(b)) for n, b in model.named_buffers()},
        "grads": {
            n: (p.grad, None if p.grad is None else _bits(p.grad))
            for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert all(v == 0 for v in after["module_hooks"].values()), {
        k: v for k, v in after["module_hooks"].items() if v
    }
    assert after["global_hooks"] == before["global_hooks"]
    assert (
        after["tensor_hooks"] == before["tensor_hooks"] == dict.fromkeys(before["tensor_hooks"], 0)
    )
    assert after["params"] == before["params"]
    assert after["buffers"] == before["buffers"]
    for name, (grad, bits) in before["grads"].items():
        assert after["grads"][name][0] is grad, name  # the very tensor
        assert after["grads"][name][1] == bits, name  # and its values
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["grad_enabled"] == before["grad_enabled"]


def prepare(model: nn.Module) -> nn.Module:
    """A state worth restoring: mixed training flags, a frozen layer, gradients already accumulated."""
    model.train()
    model.get_submodule("blocks.1").eval()
    model.head.requires_grad_(False)
    weight, bias = (
        model.get_parameter("blocks.0.fc.weight"),
        model.get_parameter("blocks.3.fc.bias"),
    )
    weight.grad = torch.full_like(weight, 0.5)
    bias.grad = torch.full_like(bias, float("nan"))
    with torch.no_grad():
        model.get_buffer("norm.running_mean").fill_(0.25)  # a train-mode forward would move it
    return model


def run_stats(model: nn.Module, **options: Any) -> None:
    g = torch.Generator().manual_seed(1)
    batches: list[tuple[tuple[torch.Tensor], dict[str, Any]]] = [
        ((torch.randn(6, 8, generator=g),), {}) for _ in range(2)
    ]
    collect_stats(model, batches, options=StatsOptions(**options))


@pytest.mark.parametrize(
    "options",
    [{}, {"train": True}, {"backward": False}, {"train": True, "exact": True}],
    ids=["eval", "train", "no-backward", "train-exact"],
)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_model_is_left_exactly_as_it_was(fault: str, options: dict[str, Any]) -> None:
    factory, error = FAULTS[fault]
    model = prepare(factory())
    before = snapshot(model)
    if error is not None and not (
        error == "backward exploded" and options.get("backward") is False
    ):
        with pytest.raises(ModinspectError, match=error):
            run_stats(model, **options)
    else:
        run_stats(model, **options)
    assert_unchanged(model, before)
    # The same model still trains normally afterwards: no stale hook fires, no state leaks.
    if error is None:
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, 8)).sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_snapshot_sees_what_it_checks() -> None:
    """Control: each kind of leftover the hygiene test looks for is detected by the snapshot."""
    model = prepare(Net(nn.ReLU()))
    before = snapshot(model)
    handle = model.get_submodule("blocks.0").register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError):
        assert_unchanged(model, before)
    handle.remove()
    tensor_handle = model.get_parameter("blocks.0.fc.weight").register_hook(lambda g: g)
    with pytest.raises(AssertionError):
        assert_unchanged(model, before)
    tensor_handle.remove()
    weight, bias = (
        model.get_parameter("blocks.1.fc.weight"),
        model.get_parameter("blocks.1.fc.bias"),
    )
    weight.requires_grad_(False)
    with pytest.raises(AssertionError):
        assert_unchanged(model, before)
    weight.requires_grad_(True)
    with torch.no_grad():
        bias[0] = -0.0 if bias[0] == 0 else bias[0] * 1.0000001
    with pytest.raises(AssertionError):
        assert_unchanged(model, before)


class Positional(nn.Module):
    """Returns its own parameter: a module output that is a leaf tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(6, 8))

    def forward(self) -> torch.Tensor:
        return self.table


class Scale(nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * w


class ParamsAsActivations(nn.Module):
    """A parameter passed straight into a submodule, and one returned by a submodule: common in real models
    (positional embeddings, learned scales), and both make a module input/output that is a parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pos = Positional()
        self.fc = nn.Linear(8, 8)
        self.scale = Scale()
        self.gain = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.fc(x) + self.pos(), self.gain)


def test_no_tensor_hook_is_left_on_a_parameter_used_as_an_activation() -> None:
    model = ParamsAsActivations()
    before = snapshot(model)
    run_stats(model)
    assert_unchanged(model, before)
