"""`watch`'s hooks: what it registers on the model, its parameters and the optimizer, and what they do.

`Hooks` owns every handle (removed by `remove()`): the model's forward pre-hook that keeps the step's first
forward for a replay and its forward hook (the outputs' NaN/Inf flag, a hook on the output's gradient), the
Collector's module hooks of a logged step (`arm()`/`disarm()`), each parameter's post-accumulate-grad hook,
the end-of-backward callback (the gradients', weights' and buffers' multi-tensor norms: the sentinel), and
the optimizer's step hooks. The hooks are bound methods, registered as they are: no layer between torch and
them on the training loop's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.watching.sentinel import LoopChecks, caller_frame, tensor_norms

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.watching.firstbad import FirstBad
    from modinspect.watching.nonfinite import BufferCheck, LazyFlags
    from modinspect.watching.options import WatchOptions
    from modinspect.watching.paramnorms import ParamNorms
    from modinspect.watching.stepstate import StepState, WatchView


class Hooks:
    """The hooks of a watched model, and their handles."""

    def __init__(
        self,
        owner: WatchView,
        state: StepState,
        first: FirstBad,
        inner: nn.Module,
        mods: list[nn.Module],
        norms: ParamNorms,
        buffers: BufferCheck,
        lazy: LazyFlags,
        options: WatchOptions,
        optimizer: Any,
    ) -> None:
        self._owner = owner
        self._state = state
        self._first = first
        self._inner = inner
        self._mods = mods
        self._norms = norms
        self._buffers = buffers
        self._lazy = lazy  # on_nonfinite="log": the window's flags, on the device
        self._options = options
        self._on_nonfinite = options.on_nonfinite
        self._device = norms.device
        self.optimizer = optimizer
        self.handles: list[Any] = []
        self.module_handles: list[
            Any
        ] = []  # the Collector's module hooks (sentinel: logged step's)
        self.output_hooks: list[Any] = []  # this step's hooks on the model's outputs' gradients
        self.loop: LoopChecks  # the loop mistakes seen (from attach() on)

    def attach(
        self, arm: bool, stepping: Callable[..., None], stepped: Callable[..., None]
    ) -> None:
        """Register the model's hooks, the parameters' gradient hooks and the optimizer's step hooks.

        `arm`: the Collector's module hooks from the first step on (mode="window", or every=1); `stepping` and
        `stepped`: the optimizer's step pre and post hooks (with optimizer=).
        """
        self.handles.append(
            self._inner.register_forward_pre_hook(self._capture, with_kwargs=True, prepend=True)
        )
        self.handles.append(self._inner.register_forward_hook(self._output_hook))
        if arm:
            self.arm()
        for i, (_, p) in enumerate(self._norms.params):
            if p.requires_grad:
                # torch leaves this method unannotated
                hook = p.register_post_accumulate_grad_hook(self._grad_hook(i))  # type: ignore[no-untyped-call]
                self.handles.append(hook)
        optimizer = self.optimizer
        if optimizer is not None:
            self.handles.append(optimizer.register_step_pre_hook(stepping))
            self.handles.append(optimizer.register_step_post_hook(stepped))
        self.loop = LoopChecks(self._inner, self._norms.params, optimizer)

    def remove(self) -> None:
        """Remove every hook this object registered (safe to call twice)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.disarm()
        self._owner.collector.remove_tensor_hooks()
        self.remove_output_hooks()

    def arm(self) -> None:
        """Register the Collector's module hooks (sentinel mode: for the logged step only)."""
        if self.module_handles:
            return
        for m in self._mods:
            self.module_handles.append(
                m.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            )
            self.module_handles.append(
                m.register_forward_hook(self._forward_hook, with_kwargs=True)
            )

    def disarm(self) -> None:
        """Remove the Collector's module hooks."""
        for h in self.module_handles:
            h.remove()
        self.module_handles = []

    def remove_output_hooks(self) -> None:
        """Remove this step's hooks on the model's outputs."""
        for h in self.output_hooks:
            h.remove()
        self.output_hooks = []

    def _ignored(self) -> bool:
        """Hooks do nothing while paused (a replay, an evaluation loop) and, with training_only, without grad."""
        if self._state.paused:
            return True
        if self._options.training_only:
            import torch

            return not torch.is_grad_enabled()
        return False

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._state.paused:
            return
        import torch

        self.loop.forward(torch.is_grad_enabled())
        if not self._ignored() and self._state.batch is None:
            from modinspect.run.stats import _rng_state

            self._state.batch = (args, dict(kwargs), _rng_state())
            self._state.caller = (
                caller_frame()
                if self._on_nonfinite != "log" and self._owner.nonfinite_step is None
                else None
            )
            if (
                self._state.window_open
            ):  # the first forward of a new step: last step's loss and gradients are spent
                self._state.loss, self._norms.grad_norms, self._state.window_open = None, {}, False

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._ignored():
            self._owner.collector.pre_hook(module, args, kwargs)

    def _forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self._ignored():
            self._owner.collector.forward_hook(module, args, kwargs, output)

    def _grad_hook(self, i: int) -> Any:
        def hook(p: torch.Tensor) -> None:
            if self._state.paused or p.grad is None:
                return
            self._state.grads_seen.add(i)
            self._queue_after_backward()

        return hook

    def _output_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        """A backward that reaches the model's output queues the end-of-backward callback too.

        FSDP2 assigns its sharded parameters' gradients without accumulating them, so their hooks never fire.
        """
        if self._ignored():
            return
        import torch

        from modinspect.tensors import iter_tensors

        outputs = [t.detach() for t in iter_tensors(output) if t.is_floating_point() and t.numel()]
        if outputs:  # the sentinel's forward half: the model's outputs, one read each
            with torch.no_grad():
                bad = ~torch.isfinite(
                    torch.stack([n.to(self._device) for n in tensor_norms(outputs)])
                ).all()
            if self._on_nonfinite == "log":
                self.fold_lazy(bad)
            else:
                self._state.out_bad = (
                    bad if self._state.out_bad is None else self._state.out_bad | bad
                )
        first = next((t for t in iter_tensors(output) if t.requires_grad), None)
        if first is not None:
            self.output_hooks.append(first.register_hook(self._output_grad))  # type: ignore[no-untyped-call]

    def _output_grad(self, grad: Any) -> None:
        if not self._state.paused:
            if not self._state.backward_started:
                self._state.backward_started = True
                self.loop.backward_started()
            self._queue_after_backward()

    def _queue_after_backward(self) -> None:
        if not self._state.callback_queued:
            import torch

            self._state.callback_queued = True
            # Runs when this backward finishes, before the user's optimizer step can spread a NaN.
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        import torch

        # Queued from a callback, this one runs after the callbacks queued during the backward, among
        # them DDP's and FSDP's, which wait for the gradients' all-reduce: the norms are of the
        # gradients the optimizer will apply, not of this rank's own.
        torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        import torch

        self._state.callback_queued = False
        self._state.backward_ran = True
        index, grads = [], []
        for i, (_, p) in enumerate(self._norms.params):
            if p.grad is None or not (i in self._state.grads_seen or distributed.sharded(p.grad)):
                continue
            g = distributed.local(p.grad.detach())
            if g.is_sparse:  # nn.Embedding(sparse=True)
                g = g.coalesce().values()
            index.append(i)
            grads.append(g)
        self._state.grads_seen = set()
        self._state.grad_bad = None
        # The step's first backward also weighs the weights and buffers, before the optimizer updates them:
        # the weights the step's forward used. One multi-tensor norm reads every tensor once.
        weights = [] if self._state.weights_checked else self._norms.live()
        buffers = [] if self._state.weights_checked else self._buffers.tensors()
        if grads or weights or buffers:
            # The sentinel: a NaN/Inf anywhere in a tensor makes its norm non-finite.
            with torch.no_grad():
                norms = tensor_norms(grads + weights + buffers)
                if grads:
                    self._norms.grad_norms.update(zip(index, norms[: len(grads)], strict=True))
                    self._state.grad_bad = ~torch.isfinite(
                        torch.stack([n.to(self._device) for n in norms[: len(grads)]])
                    ).all()
                if not self._state.weights_checked:
                    self._weigh(norms[len(grads) :], len(weights))
        if self._on_nonfinite == "log":
            self.fold_lazy(self._state.grad_bad)
        elif self._first.check(self.module_handles):
            self._first.snapshot = self._norms.copy()

    def weigh_now(self) -> None:
        """A step without backward: its weights and buffers, at its end."""
        import torch

        weights = self._norms.live()
        tensors = weights + self._buffers.tensors()
        if tensors:
            with torch.no_grad():
                self._weigh(tensor_norms(tensors), len(weights))

    def _weigh(self, norms: list[torch.Tensor], count: int) -> None:
        """The weights' norms (`count` of them, then the buffers'): the update history and the weights' flag.

        The norms are of the weights the step's forward used, that is after the previous step's update: they
        enter the history as that step's row. A weight or buffer that was finite at the start and is not now
        flags the step (an update or an in-place write made it; no output or gradient may show it yet).
        """
        import torch

        self._state.weights_checked = True
        weights, buffers = norms[:count], norms[count:]
        self._norms.push(self._owner.steps, weights, self.optimizer)
        parts = [f for f in [self._buffers.flag(buffers)] if f is not None]
        if weights:
            parts.insert(
                0, ~torch.isfinite(torch.stack([n.to(self._device) for n in weights])).all()
            )
        if not parts:
            return
        self._state.weight_bad = parts[0] if len(parts) == 1 else parts[0] | parts[1]
        if self._on_nonfinite == "log":
            self.fold_lazy(self._state.weight_bad, weights=True)

    def fold_lazy(self, bad: torch.Tensor | None, weights: bool = False) -> None:
        """on_nonfinite="log": fold a flag into the window's, on the device (read with the record)."""
        if bad is not None and self._owner.nonfinite_step is None:
            self._lazy.fold(bad, self._owner.steps + 1, self._device, weights)
