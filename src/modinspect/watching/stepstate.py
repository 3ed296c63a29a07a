"""`watch`'s state of the current training step, shared by its hooks, its NaN/Inf check and its records.

`StepState` owns what one step accumulates between its first forward and `Watch.step()` (the inputs kept for a
replay, the loss, whether a backward started and ran, the device flags of the outputs, gradients and weights),
and resets it in one `reset()` at the step's end. `WatchView` names what the parts read and write of the `Watch`
that coordinates them (its public counters and the live Collector), so that none of them imports watch.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from modinspect.reports import NonfiniteOrigin
    from modinspect.run.collector import Collector
    from modinspect.watching.nonfinite import Batch


class WatchView(Protocol):
    """What `Watch`'s parts share of it: the step count, the record count, the first NaN/Inf, the Collector."""

    steps: int
    records: int
    nonfinite_step: int | None
    nonfinite_origin: NonfiniteOrigin | None
    explanation: str | None
    collector: Collector


class StepState:
    """The current step's state; `reset()` at its end (the loss, the caller and `paused` outlive it)."""

    def __init__(self) -> None:
        self.paused = False  # pause()/resume(), and a replay: the hooks do nothing
        self.batch: Batch | None = None  # the step's first forward: args, kwargs, RNG state
        self.caller: tuple[str, str] | None = (
            None  # the user's line that called the model this step
        )
        self.loss: torch.Tensor | None = None  # spent at the next step's first forward
        self.window_open = False  # a step ended and the next has not started
        self.backward_ran = False
        self.backward_started = False
        self.grads_seen: set[int] = set()  # parameters whose gradient this backward accumulated
        self.callback_queued = False  # the end-of-backward callback of this backward
        # This step's NaN/Inf flags, on the device: the model's outputs, the gradients, weights and buffers.
        self.out_bad: torch.Tensor | None = None
        self.grad_bad: torch.Tensor | None = None
        self.weight_bad: torch.Tensor | None = None
        self.weights_checked = (
            False  # this step's weights and buffers were weighed (first backward)
        )

    def reset(self) -> None:
        """The step ended: its inputs, backward and flags are spent."""
        self.batch = None
        self.backward_ran = self.backward_started = False
        self.out_bad = self.grad_bad = self.weight_bad = None
        self.weights_checked = False
        self.window_open = True
