"""A transformers `TrainerCallback` that watches a Trainer's optimizer steps (extra `hf`).

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[WatchCallback(every=100, log="stats.jsonl")])

One watch step per optimizer step (`on_step_end`); the loss logged is the `loss` the model returned on the
step's last forward. Forwards without grad (evaluation) are ignored. Keyword arguments go to `modinspect.watch`.
The class is built on first use, so importing this module does not import transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def _build() -> type:
    import torch
    from transformers import TrainerCallback

    from modinspect.watching.watch import Watch, watch

    class WatchCallback(TrainerCallback):
        def __init__(self, **watch_kwargs: Any) -> None:
            self.watch_kwargs = watch_kwargs
            self.watch: Watch | None = None
            self._handle: Any = None

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
        ) -> None:
            if model is None:  # the Trainer passes its model to every callback
                raise TypeError("WatchCallback.on_train_begin needs the Trainer's model=")
            self.watch = watch(model, training_only=True, **self.watch_kwargs)
            self._handle = model.register_forward_hook(self._loss_hook)

        def _loss_hook(self, module: nn.Module, args: Any, output: Any) -> None:
            loss = getattr(output, "loss", None)
            if (
                self.watch is not None
                and torch.is_grad_enabled()
                and isinstance(loss, torch.Tensor)
            ):
                self.watch.log_loss(loss)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.watch is not None:
                self.watch.step()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            if self.watch is not None:
                self.watch.detach()

    return WatchCallback


_built: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "WatchCallback":
        if name not in _built:
            _built[name] = _build()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
