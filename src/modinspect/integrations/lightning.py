"""A Lightning `Callback` that watches the LightningModule's training steps (extra `lightning`).

    trainer = L.Trainer(callbacks=[WatchCallback(every=100, log="runs/stats.jsonl")])

One watch step per training batch (`on_train_batch_end`, after the optimizer step); forwards without grad
(validation, sanity checks) are ignored. Every keyword argument goes to `modinspect.watch`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from modinspect.watching.watch import Watch, watch


class WatchCallback(pl.Callback):
    def __init__(self, **watch_kwargs: Any) -> None:
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.watch: Watch | None = None

    def on_train_start(self, trainer: Any, pl_module: pl.LightningModule) -> None:
        self.watch = watch(pl_module, training_only=True, **self.watch_kwargs)

    def on_train_batch_end(
        self, trainer: Any, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.watch is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.watch.step(loss)

    def on_train_end(self, trainer: Any, pl_module: pl.LightningModule) -> None:
        self._detach()

    def on_exception(
        self, trainer: Any, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._detach()

    def teardown(self, trainer: Any, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    def _detach(self) -> None:
        if self.watch is not None:
            self.watch.detach()
