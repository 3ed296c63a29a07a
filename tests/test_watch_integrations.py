"""`watch`'s optional outputs and integrations: TensorBoard event files, a Lightning Callback, a transformers
TrainerCallback. Each is tested when its library is installed and skipped cleanly otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modinspect
from models import SmallCNN
from test_watch import PlainHooks, expected_module, hook_counts


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensorboard_events_match_plain_hooks_and_the_log(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from modinspect.watching.tensorboard import module_tag, param_tag

    torch.manual_seed(0)
    model = SmallCNN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    plain = PlainHooks(model)
    losses = {}
    with modinspect.watch(
        model, every=2, log=tmp_path / "s.jsonl", tensorboard=tmp_path / "tb"
    ) as w:
        for step in range(1, 5):
            plain.new_step()
            loss = model(torch.randn(4, 3, 16, 16)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step(loss)
            losses[step] = loss.item()
    plain.remove()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (2, pytest.approx(losses[2], rel=1e-6)),
        (4, pytest.approx(losses[4], rel=1e-6)),
    ]
    records = read_log(tmp_path / "s.jsonl")[1:]
    compared = 0
    for i, record in enumerate(records):
        window = range(
            2 * i + 1, 2 * i + 2
        )  # mode="sentinel": a record is its logged step's statistics
        for row in record["modules"]:
            want = expected_module(plain, window, row["name"], row["type"] == "ReLU")
            for key in (
                "mean",
                "std",
                "min",
                "max",
                "zero_fraction",
                "nan",
                "grad_norm",
                "dead_fraction",
            ):
                if want[key] is None:
                    assert module_tag(row["name"], key) not in tags["scalars"]
                    continue
                event = events.Scalars(module_tag(row["name"], key))[i]
                assert event.step == record["step"]
                assert event.value == pytest.approx(want[key], rel=1e-5, abs=1e-6), (
                    row["name"],
                    key,
                )
                compared += 1
            hist = events.Histograms(module_tag(row["name"], "histogram"))[i]
            assert hist.step == record["step"]
            assert list(hist.histogram_value.bucket) == row["histogram"]["counts"]
            assert list(hist.histogram_value.bucket_limit) == pytest.approx(
                row["histogram"]["edges"][1:]
            )
        for p in record["params"]:
            event = events.Scalars(param_tag(p["name"], "update_ratio"))[i]
            assert event.value == pytest.approx(p["update_ratio"], rel=1e-6)
    assert compared > 100


def test_tensorboard_without_the_package_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from modinspect.errors import UsageError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    model = nn.Linear(3, 2)
    with pytest.raises(
        UsageError,
        match=r"^tensorboard= needs the tensorboard package: pip install 'modinspect\[tensorboard\]'$",
    ):
        modinspect.watch(model, tensorboard=tmp_path / "tb")
    assert hook_counts(model) == [0] * len(hook_counts(model))


@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:The '.*_dataloader' does not have many workers")
def test_lightning_callback_steps_per_batch_and_ignores_validation(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from modinspect.integrations.lightning import WatchCallback

    class Lit(pl.LightningModule):  # type: ignore[misc, name-defined]  # importorskip's module is Any to mypy
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            self.losses: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randn(48, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    lit = Lit()
    trainer = pl.Trainer(
        max_steps=6,
        val_check_interval=3,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        callbacks=[WatchCallback(every=2, log=tmp_path / "lit.jsonl")],
    )
    trainer.fit(lit, loader, loader)
    records = read_log(tmp_path / "lit.jsonl")[1:]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert [r["loss"] for r in records] == pytest.approx(
        [lit.losses[1], lit.losses[3], lit.losses[5]], rel=1e-6
    )
    root = [next(m for m in r["modules"] if m["name"] == "") for r in records]
    # The logged step alone (mode="sentinel"); validation and sanity-check forwards are not counted.
    assert [m["calls"] for m in root] == [1, 1, 1]
    assert [m["count"] for m in root] == [8, 8, 8]
    assert hook_counts(lit) == [0] * len(hook_counts(lit))


def test_transformers_trainer_callback_logs_each_optimizer_step(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from modinspect.integrations.transformers import WatchCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(0, 97, (8, 12), generator=gen)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        callbacks=[WatchCallback(every=2, log=tmp_path / "hf.jsonl")],
    )
    trainer.train()
    records = read_log(tmp_path / "hf.jsonl")[1:]
    assert [r["step"] for r in records] == [2, 4]
    logged = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    assert [r["loss"] for r in records] == pytest.approx([logged[2], logged[4]], abs=1e-4)
    blocks = [
        next(m for m in r["modules"] if m["name"] == "transformer.h.0.mlp.c_fc") for r in records
    ]
    assert [m["calls"] for m in blocks] == [1, 1] and all(m["grad_norm"] > 0 for m in blocks)
    assert hook_counts(model) == [0] * len(hook_counts(model))
