"""`modinspect.watch` inside a real training loop: the JSONL log value by value against plain hooks, one
device->host transfer per window, the first NaN/Inf stopped at its step with module, op and line, hygiene.
"""

from __future__ import annotations

import importlib.util
import json
import linecache
import math
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modinspect
from conftest import invoke
from models import BadGrad, SmallCNN
from modinspect.errors import ModinspectError, NonFiniteError, UsageError
from modinspect.run import collector as stats_hooks
from modinspect.watching.watch import NonFiniteWarning

HERE = Path(__file__).resolve()


def shown(path: Path | str) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def line_of(marker: str) -> tuple[str, str]:
    """(`file:line`, code) of the line ending with `# fault: marker` in this file."""
    for number, text in enumerate(HERE.read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# fault: {marker}"):
            return f"{shown(HERE)}:{number}", text.strip()
    raise AssertionError(marker)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the reference: plain hooks, torch's reductions


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    return None


class PlainHooks:
    """Every module's output (cloned) and the squared norms of its gradients, per step, with torch's own hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[dict[str, list[torch.Tensor]]] = []
        self.grad_sq: list[dict[str, float]] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules()]

    def new_step(self) -> None:
        self.outputs.append({})
        self.grad_sq.append({})

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            t = first_tensor(out)
            if t is None:
                return
            self.outputs[-1].setdefault(name, []).append(t.detach().clone())
            if t.requires_grad:
                step = self.grad_sq[-1]

                def grad_hook(g: torch.Tensor) -> None:
                    step[name] = step.get(name, 0.0) + float(g.double().square().sum())

                t.register_hook(grad_hook)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def expected_module(plain: PlainHooks, steps: range, name: str, relu: bool) -> dict[str, Any]:
    xs = [t for s in steps for t in plain.outputs[s].get(name, [])]
    x = torch.cat([t.double().reshape(-1) for t in xs])
    finite = x[torch.isfinite(x)]
    grads = [plain.grad_sq[s].get(name) for s in steps]
    dead = None
    if relu:
        alive = None
        for t in xs:
            dim = 1 if t.ndim >= 4 else t.ndim - 1
            a = (t != 0).any(dim=[d for d in range(t.ndim) if d != dim])
            alive = a if alive is None else alive | a
        assert alive is not None
        dead = float((~alive).double().mean())
    return {
        "calls": len(xs),
        "count": x.numel(),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "zero_fraction": float((x == 0).double().mean()),
        "nan": int(torch.isnan(x).sum()),
        "inf": int(torch.isinf(x).sum()),
        "dead_fraction": dead,
        "grad_norm": math.sqrt(sum(g for g in grads if g is not None) / len(steps))
        if any(grads)
        else None,
    }


def check_record(record: dict[str, Any], plain: PlainHooks, steps: range, model: nn.Module) -> int:
    """Compare every module that returned a tensor; returns how many were compared."""
    rows = {r["name"]: r for r in record["modules"]}
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    compared = 0
    for name in plain.outputs[steps[0]]:
        want = expected_module(plain, steps, name, types[name] in ("ReLU", "ReLU6"))
        got = rows[name]
        assert got["type"] == types[name]
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
            else:
                assert got[key] == value, (name, key)
        compared += 1
    return compared


def run_and_compare(
    model: nn.Module,
    make_batch: Callable[[int], Any],
    forward: Callable[[nn.Module, Any], Any],
    tmp_path: Path,
    steps: int = 6,
    every: int = 3,
    mode: str = "sentinel",
) -> None:
    """mode="window": a record merges every step since the last one; "sentinel": the logged step's alone."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = tmp_path / "stats.jsonl"
    plain = PlainHooks(model)
    params: dict[int, dict[str, tuple[float, float, float, float]]] = {}
    with modinspect.watch(model, every=every, log=log, mode=mode) as w:
        for step in range(1, steps + 1):
            plain.new_step()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            loss = forward(model, make_batch(step))
            loss.backward()
            grads = {
                n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None
            }
            opt.step()
            params[step] = {
                n: (
                    float(p.detach().norm()),
                    grads.get(n, -1.0),
                    float((p.detach() - before[n]).norm()),
                    float(before[n].norm()),
                )
                for n, p in model.named_parameters()
            }
            opt.zero_grad()
            w.step(loss)
    plain.remove()
    header, *records = read_log(log)
    assert header == {
        "schema": "modinspect.watch/1",
        "kind": "header",
        "model": type(model).__name__,
        "every": every,
        "started": header["started"],
        "device": "cpu",
        "world_size": 1,
    }
    assert [r["step"] for r in records] == list(range(every, steps + 1, every))
    for i, record in enumerate(records):
        window = range(i * every if mode == "window" else (i + 1) * every - 1, (i + 1) * every)
        assert check_record(record, plain, window, model) >= 5
        assert record["nonfinite"] is None
        logged = record["step"]
        for p in record["params"]:
            norm, grad, update, before_norm = params[logged][p["name"]]
            assert p["norm"] == pytest.approx(norm, rel=1e-5)
            assert p["grad_norm"] == pytest.approx(grad, rel=1e-5, abs=1e-9)
            assert p["update_norm"] == pytest.approx(update, rel=1e-4, abs=1e-9)
            assert p["update_ratio"] == pytest.approx(update / before_norm, rel=1e-4, abs=1e-9)
        assert [p["name"] for p in record["params"]] == [n for n, _ in model.named_parameters()]
    assert w.report().steps == steps and w.report().records == len(records)
    # The run's totals merge the records' steps: calls add up, grad_norm is the RMS over the steps they cover.
    for row in w.report().modules:
        rows = [next(r for r in record["modules"] if r["name"] == row.name) for record in records]
        assert row.calls == sum(r["calls"] for r in rows)
        if row.grad_norm is not None:
            assert row.grad_norm == pytest.approx(
                math.sqrt(sum(r["grad_norm"] ** 2 for r in rows) / len(rows)), rel=1e-6
            )


@pytest.mark.parametrize("mode", ["sentinel", "window"])
def test_jsonl_matches_plain_hooks_on_a_small_cnn(tmp_path: Path, mode: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN().train()
    gen = torch.Generator().manual_seed(1)
    run_and_compare(
        model,
        lambda step: torch.randn(4, 3, 16, 16, generator=gen),
        lambda m, x: m(x).square().mean(),
        tmp_path,
        mode=mode,
    )


@pytest.mark.parametrize("mode", ["sentinel", "window"])
def test_jsonl_matches_plain_hooks_on_tiny_gpt2(tmp_path: Path, mode: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).train()
    gen = torch.Generator().manual_seed(2)

    def batch(step: int) -> torch.Tensor:
        return torch.randint(0, 97, (2, 12), generator=gen)

    run_and_compare(
        model,
        batch,
        lambda m, ids: m(input_ids=ids, labels=ids).loss,
        tmp_path,
        steps=4,
        every=2,
        mode=mode,
    )


def test_histogram_of_the_logged_step_is_torch_histc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh())
    outs: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    with modinspect.watch(model, every=2, log=tmp_path / "h.jsonl") as w:
        for _ in range(4):
            model.zero_grad()
            model(torch.randn(16, 8)).sum().backward()
            w.step()
    records = read_log(tmp_path / "h.jsonl")[1:]
    for record, out in zip(records, (outs[1], outs[3]), strict=True):
        hist = next(r for r in record["modules"] if r["name"] == "1")["histogram"]
        lo, hi = float(out.min()), float(out.max())
        assert hist["edges"] == pytest.approx(
            [lo + (hi - lo) * i / 16 for i in range(17)], rel=1e-6
        )
        assert sum(hist["counts"]) == out.numel()
        want = torch.histc(out.double(), bins=16, min=lo, max=hi).long().tolist()
        assert (
            sum(abs(a - b) for a, b in zip(hist["counts"], want, strict=True)) <= 2
        )  # float rounding at edges


# ---------------------------------------------------------------- transfers


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of device->host reads made by modinspect's code, by the function that made them."""
    counts: dict[str, int] = {}
    src = str(Path(modinspect.__file__).parent)

    def wrap(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(src):
                counts[caller.f_code.co_name] = counts.get(caller.f_code.co_name, 0) + 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        wrap(name)
    return counts


@pytest.mark.parametrize("mode, flag_reads", [("log", 0), ("warn", 10)])
def test_one_transfer_per_every_steps(
    host_reads: dict[str, int], mode: str, flag_reads: int
) -> None:
    torch.manual_seed(0)
    model = SmallCNN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    transfers: list[int] = []
    original = stats_hooks.to_host

    def counted(data: torch.Tensor | None) -> list[float]:
        transfers.append(data.numel() if data is not None else 0)
        return original(data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats_hooks, "to_host", counted)
        w = modinspect.watch(model, every=5, on_nonfinite=mode)
        for _ in range(10):
            loss = model(torch.randn(2, 3, 16, 16)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step(loss)
        w.detach()
    assert len(transfers) == 2  # steps 5 and 10: one copy each, whatever the number of modules
    assert transfers[0] > 12 * 10  # every module's statistics of five steps travel in it
    # Besides that copy (to_host calls .cpu() then .tolist()), modinspect reads one flag per step, or none.
    assert host_reads.pop("to_host") == 4
    assert host_reads == ({"read_flag": flag_reads} if flag_reads else {})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_synchronisation_between_logged_steps_on_cuda() -> None:
    model = SmallCNN().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with modinspect.watch(model, every=4, on_nonfinite="log") as w:
        batch = torch.randn(2, 3, 16, 16, device="cuda")
        torch.cuda.synchronize()
        for step in range(1, 8):
            torch.cuda.set_sync_debug_mode("error" if step % 4 else 0)
            try:
                loss = model(batch).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                w.step(loss)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    assert w.records == 2


# ---------------------------------------------------------------- the first NaN/Inf


class LogAct(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x + 3.0)  # fault: log


def planted() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), LogAct(), nn.Linear(8, 2))


def batches(bad_step: int) -> Iterator[tuple[int, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 30):
        # Small inputs keep x + 3 > 0; at bad_step the Linear's outputs go below -3 and log makes NaN.
        yield step, torch.randn(5, 4, generator=gen) * (100.0 if step == bad_step else 0.1)


def test_planted_nan_stops_at_its_step_with_module_op_and_line(tmp_path: Path) -> None:
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log, saved = tmp_path / "run.jsonl", tmp_path / "bad.pt"
    ran = []
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, every=5, log=log, on_nonfinite="raise", save_batch=saved) as w,
    ):
        for step, x in batches(bad_step=7):
            ran.append(step)
            loss = model(x).square().mean()  # fault: call
            loss.backward()
            opt.step()
            after_update = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            w.step(loss)
    source, code = line_of("log")
    caller, _ = line_of("call")
    err = info.value
    assert isinstance(err, ModinspectError)
    assert ran[-1] == 7 and err.step == 7
    o = err.origin
    assert o is not None
    assert (o.module, o.type, o.phase, o.cause, o.op, o.source, o.code) == (
        "1",
        "LogAct",
        "forward",
        "produced",
        "aten::log",
        source,
        code,
    )
    assert o.caller == caller  # the user's own line that called the model, beside the op's line
    assert str(err) == (
        f"first NaN/Inf at step 7: 1 (LogAct), forward, aten::log at {source} (called from {caller}); "
        f"batch saved to {saved}"
    )
    # The replay ran on the weights before the update and put the user's weights back.
    for a, b in zip(after_update, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0, equal_nan=True)
    assert any(
        torch.isnan(p).any() for p in model.parameters()
    )  # the user's NaN update is theirs to see
    _, first, bad = read_log(log)
    assert (first["step"], first["nonfinite"], bad["step"]) == (5, None, 7)
    assert bad["nonfinite"] == {
        "module": "1",
        "type": "LogAct",
        "phase": "forward",
        "op": "aten::log",
        "source": source,
        "code": code,
        "cause": "produced",
        "rank": None,
        "caller": caller,
    }
    assert bad["loss"] is None  # NaN is written as null, strict JSON
    # Step 7 is not a logged step: its record holds the statistics of its replay (the outputs' sum as the loss).
    row = next(r for r in bad["modules"] if r["name"] == "1")
    assert row["calls"] == 1 and row["nan"] > 0
    assert "NaN" not in log.read_text()
    # The saved batch is the step-7 input, and `stats --input` replays it to the same op.
    x7 = dict(batches(7))[7]
    assert torch.equal(torch.load(saved, weights_only=True), x7)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_saved_batch_replays_with_stats_input(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class LogAct(nn.Module):
            def forward(self, x):
                return torch.log(x + 3.0)

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 8), LogAct(), nn.Linear(8, 2))
    """)
    )
    spec = importlib.util.spec_from_file_location("watch_nets", tmp_path / "nets.py")
    assert spec is not None and spec.loader is not None
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model = nets.build()
    with modinspect.watch(model, every=100, on_nonfinite="log", save_batch=tmp_path / "never.pt"):
        pass
    assert not (tmp_path / "never.pt").exists()
    with (
        pytest.warns(
            NonFiniteWarning,
            match=r"^first NaN/Inf at step 3: 1 \(LogAct\), forward, aten::log at ",
        ),
        modinspect.watch(model, every=100, save_batch=tmp_path / "bad.pt") as w,
    ):
        for step, x in batches(bad_step=3):
            model.zero_grad()
            model(x).sum().backward()
            w.step()
            if step == 4:
                break
    result = invoke("stats", "nets.py:build", "--input", "bad.pt", "--json", cwd=tmp_path)
    assert result.exit_code == 1, result.stderr
    origin = json.loads(result.stdout)["nonfinite_origin"]
    assert (origin["module"], origin["op"], origin["source"]) == ("1", "aten::log", "nets.py:7")


def test_keyword_batch_is_saved_as_keywords(tmp_path: Path) -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return torch.log(self.fc(x) * scale)

    model = Kw()
    x, scale = torch.randn(3, 4), torch.full((1,), -1.0)
    with (
        pytest.warns(NonFiniteWarning),
        modinspect.watch(model, save_batch=tmp_path / "kw.pt") as w,
    ):
        model(x, scale=scale).sum().backward()
        w.step()
    saved = torch.load(tmp_path / "kw.pt", weights_only=True)
    assert (
        list(saved) == ["x", "scale"]
        and torch.equal(saved["x"], x)
        and torch.equal(saved["scale"], scale)
    )


def test_backward_nan_with_optimizer_steps_is_traced_on_the_weights_before_the_update(
    tmp_path: Path,
) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.bad, self.fc2 = nn.Linear(4, 8), BadGrad(), nn.Linear(8, 1)
            self.armed = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            return self.fc2(self.bad(h) if self.armed else h)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(
            model, every=10, optimizer=opt, on_nonfinite="raise", log=tmp_path / "b.jsonl"
        ) as w,
    ):
        for step in range(1, 20):
            model.armed = step == 4
            loss = model(torch.randn(3, 4)).mean()
            w.log_loss(loss)
            value = loss.item()
            loss.backward()
            opt.step()  # the watch steps here
            opt.zero_grad()
    assert info.value.step == 4 and w.steps == 4
    o = info.value.origin
    assert o is not None
    assert (o.module, o.phase, o.cause, o.op) == ("bad", "backward", "produced", "aten::mul")
    assert not opt._optimizer_step_post_hooks
    records = read_log(tmp_path / "b.jsonl")[1:]
    assert [r["step"] for r in records] == [4]
    assert records[0]["loss"] == pytest.approx(value)


class ArmedNet(nn.Module):
    """fc1 -> (BadGrad when armed: a NaN in backward only) -> fc2; the forward stays finite."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bad, self.fc2 = nn.Linear(4, 8), BadGrad(), nn.Linear(8, 1)
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.bad(h) if self.armed else h)


@pytest.mark.parametrize("how", ["optimizer", "check"])
@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_backward_only_nan_raises_before_the_optimizer_applies_it(how: str, optim: str) -> None:
    """The README's loop: with optimizer= (a step pre-hook) or w.check() before opt.step(), the weights the
    exception leaves are the finite weights after step 6, bit for bit."""
    torch.manual_seed(0)
    model = ArmedNet()
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if optim == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-2)
    )
    gen = torch.Generator().manual_seed(4)
    after: dict[int, list[torch.Tensor]] = {}
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(
            model, every=5, on_nonfinite="raise", optimizer=opt if how == "optimizer" else None
        ) as w,
    ):
        for step in range(1, 20):
            model.armed = step == 7
            loss = model(torch.randn(3, 4, generator=gen)).mean()
            assert torch.isfinite(loss)  # the NaN appears only in backward
            loss.backward()
            if how == "check":
                w.check()
            opt.step()
            opt.zero_grad()
            if how == "check":
                w.step(loss)
            after[step] = [p.detach().clone() for p in model.parameters()]
    assert info.value.step == 7 and max(after) == 6 and w.steps == 7
    o = info.value.origin
    assert o is not None
    assert (o.module, o.phase, o.cause) == ("bad", "backward", "produced")
    for p, want in zip(model.parameters(), after[6], strict=True):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=0)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_check_does_nothing_on_finite_steps_and_in_other_modes() -> None:
    torch.manual_seed(0)
    model = ArmedNet()
    with warnings.catch_warnings(record=True) as caught, modinspect.watch(model, every=5) as w:
        warnings.simplefilter("always")
        for step in range(1, 4):
            model.armed = step == 2
            model.zero_grad()
            model(torch.randn(3, 4)).mean().backward()
            w.check()  # on_nonfinite="warn": the warning comes at w.step()
            assert len([c for c in caught if c.category is NonFiniteWarning]) == (
                0 if step <= 2 else 1
            )
            w.step()
            assert len([c for c in caught if c.category is NonFiniteWarning]) == (
                0 if step < 2 else 1
            )


def test_warn_mode_keeps_training_and_logs_the_nan_counts(tmp_path: Path) -> None:
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        warnings.catch_warnings(record=True) as caught,
        modinspect.watch(model, every=4, log=tmp_path / "w.jsonl") as w,
    ):
        warnings.simplefilter("always")
        for step, x in batches(bad_step=6):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            w.step()
            if step == 12:
                break
    assert [str(c.message).split(":")[0] for c in caught if c.category is NonFiniteWarning] == [
        "first NaN/Inf at step 6"
    ]
    # It names the user's `w.step()` line (this file), not modinspect's.
    assert [c.filename for c in caught if c.category is NonFiniteWarning] == [__file__]
    records = read_log(tmp_path / "w.jsonl")[1:]
    assert [r["step"] for r in records] == [4, 6, 8, 12]  # the NaN step's record is written at once
    assert [r["nonfinite"] is not None for r in records] == [False, True, False, False]
    # After step 6 the weights hold NaN: every later output counts them.
    last = next(r for r in records[-1]["modules"] if r["name"] == "2")
    assert last["nan"] == last["count"] == 5 * 2 and last["mean"] is None  # the logged step's batch
    report = w.report()
    assert report.nonfinite_step == 6 and report.nonfinite_origin is not None
    assert report.nonfinite_origin.op == "aten::log" and report.steps == 12


def test_breakpoint_mode_calls_the_breakpoint_hook_at_the_bad_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stops: list[int] = []
    model = planted()
    with modinspect.watch(model, every=10, on_nonfinite="breakpoint") as w:
        monkeypatch.setattr(sys, "breakpointhook", lambda *a, **k: stops.append(w.steps))
        for step, x in batches(bad_step=2):
            model.zero_grad()
            model(x).sum().backward()
            w.step()
            if step == 4:
                break
    assert stops == [2]


def test_sparse_embedding_gradients_are_watched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 4, sparse=True)
    model = nn.Sequential(embedding, nn.Linear(4, 1))
    ids = torch.tensor([[1, 2, 2, 5]])
    with modinspect.watch(model, every=1, log=tmp_path / "e.jsonl") as w:
        model(ids).sum().backward()
        assert embedding.weight.grad is not None
        grad = embedding.weight.grad.coalesce().values().norm().item()
        w.step()
    params = read_log(tmp_path / "e.jsonl")[1]["params"]
    assert params[0]["name"] == "0.weight" and params[0]["grad_norm"] == pytest.approx(
        grad, rel=1e-6
    )


def test_log_mode_names_the_module_in_the_window_record_without_reading_a_flag(
    tmp_path: Path,
) -> None:
    model = planted()
    with modinspect.watch(
        model, every=5, on_nonfinite="log", log=tmp_path / "l.jsonl", mode="window"
    ) as w:
        for step, x in batches(bad_step=3):
            model.zero_grad()
            model(x).sum().backward()
            w.step()
            if step == 5:
                break
    record = read_log(tmp_path / "l.jsonl")[1]
    assert record["step"] == 5
    assert record["nonfinite"] == {
        "module": "1",
        "type": "LogAct",
        "phase": "forward",
        "op": None,
        "source": None,
        "code": None,
        "cause": "produced",
        "rank": None,
    }
    assert w.report().nonfinite_step == 5


def test_log_mode_logged_step_is_fast_and_a_nan_on_it_is_replayed_exactly(
    tmp_path: Path, host_reads: dict[str, int]
) -> None:
    """on_nonfinite="log" runs `stats`' fast reductions on the logged step; when the values its record reads
    show a NaN, the step is replayed then: module and exact counts, as in the other modes."""
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outs: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    exact: list[bool] = []
    before_record: dict[str, int] = {}
    with modinspect.watch(model, every=5, on_nonfinite="log", log=tmp_path / "f.jsonl") as w:
        for step, x in batches(bad_step=5):
            exact.append(w.collector.exact)
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            if step == 5:
                before_record = dict(host_reads)
            w.step()
            if step == 5:
                break
    assert exact == [False] * 5 and before_record == {}
    record = read_log(tmp_path / "f.jsonl")[1]
    assert record["step"] == 5
    assert (record["nonfinite"]["module"], record["nonfinite"]["cause"]) == ("1", "produced")
    row = next(r for r in record["modules"] if r["name"] == "1")
    bad = outs[4]  # step 5's LogAct output, as the user's forward made it
    assert (row["calls"], row["count"], row["nan"]) == (1, bad.numel(), int(torch.isnan(bad).sum()))
    assert row["nan"] > 0 and w.report().nonfinite_step == 5


@pytest.mark.parametrize("on_nonfinite", ["warn", "log"])
def test_the_replay_leaves_the_rng_state_as_training_left_it(on_nonfinite: str) -> None:
    """The replay draws the flagged forward's dropout masks again; the training that goes on draws on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), LogAct(), nn.Linear(8, 2)).train()
    states: list[tuple[torch.Tensor, torch.Tensor]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        with modinspect.watch(model, every=2, on_nonfinite=on_nonfinite) as w:
            for step, x in batches(bad_step=2):
                model(x).square().mean().backward()
                model.zero_grad()
                torch.rand(5)  # the loop draws after the forward (the next batch's augmentation...)
                before = torch.get_rng_state()
                w.step()
                states.append((before, torch.get_rng_state()))
                if step == 2:
                    break
    assert w.nonfinite_step == 2
    assert all(torch.equal(a, b) for a, b in states)


@pytest.mark.parametrize("on_nonfinite", ["warn", "log"])
def test_the_replay_leaves_batchnorm_running_statistics_as_training_left_them(
    on_nonfinite: str,
) -> None:
    """The replay runs the flagged forward again in train mode; BatchNorm's buffers are put back after it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), LogAct(), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    bn = model[2]
    assert isinstance(bn, nn.BatchNorm1d)
    trained: list[torch.Tensor] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        with modinspect.watch(model, every=2, on_nonfinite=on_nonfinite) as w:
            for step, x in batches(bad_step=2):
                model(x).square().mean().backward()
                model.zero_grad()
                trained = [t.clone() for t in bn.buffers()]
                w.step()
                if step == 2:
                    break
    assert w.nonfinite_step == 2 and int(bn.num_batches_tracked) == 2  # type: ignore[arg-type]
    for before, now in zip(trained, bn.buffers(), strict=True):
        assert torch.allclose(before.double(), now.double(), equal_nan=True)


def test_log_mode_sentinel_names_the_first_bad_step_without_reading_a_flag(
    tmp_path: Path, host_reads: dict[str, int]
) -> None:
    """mode="sentinel": no module hook ran at step 3; the record at 5 says a NaN/Inf was seen at step 3."""
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before_record: dict[str, int] = {}
    with modinspect.watch(model, every=5, on_nonfinite="log", log=tmp_path / "s.jsonl") as w:
        for step, x in batches(bad_step=3):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            if step == 5:
                before_record = dict(host_reads)
            w.step()
            if step == 5:
                break
    assert before_record == {}  # nothing read per step, the first NaN's included
    # At the record: its one transfer (.cpu() and .tolist()); step 5's own values hold NaN (the weights went NaN
    # at step 3), so that step is replayed exactly for its record, which reads what `stats` reads.
    assert host_reads["to_host"] >= 2
    record = read_log(tmp_path / "s.jsonl")[1]
    assert record["step"] == 5
    assert record["nonfinite"] == {
        "module": None,
        "type": None,
        "phase": "backward",
        "op": None,
        "source": None,
        "code": None,
        "cause": "sentinel",
        "rank": None,
    }
    assert w.report().nonfinite_step == 3
    origin = w.report().nonfinite_origin
    assert origin is not None and origin.detail == "a NaN/Inf gradient or loss at step 3"


# ---------------------------------------------------------------- NaN/Inf that reaches no output, gradient or loss


class WithSpare(nn.Module):
    """A model with a layer its forward does not use (yet): a NaN written there shows in no output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_weight_made_nan_in_place_is_caught_at_the_next_step() -> None:
    """The per-step weight norms are the sentinel's too: an unused weight made NaN between steps is named."""
    model = WithSpare()
    with (
        pytest.warns(NonFiniteWarning, match=r"first NaN/Inf at step 4: spare \(Linear\)"),
        modinspect.watch(model, every=100) as w,
    ):
        for step in range(1, 7):
            if step == 4:
                with torch.no_grad():
                    model.spare.weight[0, 1] = math.nan
            out = model(torch.randn(3, 4))
            out.square().mean().backward()
            assert torch.isfinite(out).all() and torch.isfinite(model.used.weight.grad).all()  # type: ignore[arg-type]
            model.zero_grad()
            w.step()
    origin = w.nonfinite_origin
    assert w.nonfinite_step == 4 and origin is not None
    assert (origin.module, origin.type, origin.cause, origin.tensor) == (
        "spare",
        "Linear",
        "weight",
        "spare.weight",
    )
    assert origin.detail is not None and origin.detail.startswith(
        "`spare.weight` holds 1 NaN, while no "
    )


def test_a_batchnorm_running_variance_overflowing_is_caught_at_its_step() -> None:
    """Inputs near 1e20: the batch is normalised (finite outputs and gradients) but running_var overflows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, every=100, on_nonfinite="raise") as w,
    ):
        for step in range(1, 6):
            x = torch.randn(8, 4)
            if step == 3:
                x[:, 0] *= 1e20
            out = model(x)
            out.square().mean().backward()
            assert torch.isfinite(out).all()
            # The first Linear's gradients are finite but their float32 norm overflows: no alarm from them.
            assert all(
                torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
            )
            model.zero_grad()
            w.step()
    origin = info.value.origin
    assert info.value.step == 3 and origin is not None
    assert (origin.module, origin.type, origin.cause, origin.tensor) == (
        "1",
        "BatchNorm1d",
        "weight",
        "1.running_var",
    )
    infs = int(torch.isinf(model[1].running_var).sum())  # type: ignore[arg-type]
    assert infs > 0 and origin.detail is not None
    assert origin.detail.startswith(f"`1.running_var` holds {infs} Inf")


def test_log_mode_names_a_weight_made_nan_between_logged_steps(
    tmp_path: Path, host_reads: dict[str, int]
) -> None:
    model = WithSpare()
    with modinspect.watch(model, every=5, on_nonfinite="log", log=tmp_path / "w.jsonl") as w:
        for step in range(1, 6):
            if step == 3:
                with torch.no_grad():
                    model.spare.bias[1] = -math.inf
            model(torch.randn(3, 4)).square().mean().backward()
            model.zero_grad()
            w.step()
    # Nothing read per step: the record's one transfer, then the record's exact look at the tensor whose
    # norm is not finite (a number or null for its norm).
    assert host_reads == {"to_host": 2, "exact_overflows": 2}
    origin = w.report().nonfinite_origin
    assert w.report().nonfinite_step == 3 and origin is not None
    assert (origin.cause, origin.detail) == ("sentinel", "a NaN/Inf weight or buffer at step 3")


def test_no_alarm_for_a_buffer_that_starts_non_finite_nor_for_finite_weights_with_an_overflowing_norm() -> (
    None
):
    """A mask buffer of -inf is left out (it held it when the watch began); weights of 1e20 have a float32
    norm of inf but are finite: checked exactly on the flagged path, no warning."""
    model = WithSpare()
    model.register_buffer("mask", torch.full((4,), -math.inf))
    with torch.no_grad():
        model.spare.weight.fill_(1e20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with modinspect.watch(model, every=2) as w:
            for _ in range(4):
                model(torch.randn(3, 4)).square().mean().backward()
                model.zero_grad()
                w.step()
    assert w.nonfinite_step is None and w.records == 2


# ---------------------------------------------------------------- hygiene


def hook_counts(model: nn.Module) -> list[int]:
    dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    counts = [len(getattr(m, d)) for m in model.modules() for d in dicts]
    counts += [
        len(getattr(p, "_backward_hooks", None) or {})
        + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        for p in model.parameters()
    ]
    return counts


@pytest.mark.parametrize("on_nonfinite", ["warn", "log"])
def test_module_hooks_are_registered_for_the_logged_step_only(on_nonfinite: str) -> None:
    """Between logged steps the sentinel needs no module hook: only the model's own forward (pre-)hook and
    one gradient hook per parameter stay; the step before a logged step arms every module, its end disarms."""
    torch.manual_seed(0)
    model = SmallCNN().train()
    submodules = [m for name, m in model.named_modules() if name]

    def module_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in submodules)

    armed: list[int] = []
    with modinspect.watch(model, every=4, on_nonfinite=on_nonfinite) as w:
        for _ in range(8):
            armed.append(module_hooks())
            model(torch.randn(2, 3, 16, 16)).mean().backward()
            model.zero_grad()
            w.step()
        # The model's own: the step's capture and the outputs' check (step 8's hooks are gone again).
        assert len(model._forward_hooks) + len(model._forward_pre_hooks) == 2
    # Steps 4 and 8 are logged: hooked (two hooks per module), every other step runs bare.
    assert armed == [0, 0, 0, 2 * len(submodules), 0, 0, 0, 2 * len(submodules)]
    assert module_hooks() == 0 and sum(hook_counts(model)) == 0


@pytest.mark.parametrize("where", ["forward", "backward", "between"])
def test_detach_removes_everything_when_training_raises(tmp_path: Path, where: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hooks_before = [len(opt._optimizer_step_post_hooks), *hook_counts(model)]

    def boom(*_: Any) -> None:
        raise RuntimeError("user code exploded")

    with (
        pytest.raises(RuntimeError, match="user code exploded"),
        modinspect.watch(model, every=2, optimizer=opt, log=tmp_path / "r.jsonl"),
    ):
        for step in range(1, 5):
            if step == 3 and where == "forward":
                model.fc.register_forward_hook(boom)
            out = model(torch.randn(2, 3, 16, 16))
            if step == 3 and where == "backward":
                out.register_hook(boom)
            out.mean().backward()
            opt.step()
            opt.zero_grad()
            if step == 3 and where == "between":
                boom()
    model.fc._forward_hooks.clear()
    assert (
        [len(opt._optimizer_step_post_hooks), *hook_counts(model)]
        == hooks_before
        == [0] * len(hooks_before)
    )
    _, *records = read_log(tmp_path / "r.jsonl")
    # Steps 1-2 make a record; a step that raised never ended, a completed step 3 is flushed on the way out.
    assert [r["step"] for r in records] == ([2] if where != "between" else [2, 3])
    model(torch.randn(2, 3, 16, 16)).mean().backward()  # the model still trains, hook-free


def test_detach_is_idempotent_and_a_detached_watch_refuses_steps() -> None:
    model = nn.Linear(3, 2)
    w = modinspect.watch(model)
    w.detach()
    w.detach()
    assert hook_counts(model) == [0] * len(hook_counts(model))
    with pytest.raises(UsageError, match=r"^this watch is detached; start a new one$"):
        w.step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every": 0}, "every must be a positive number of steps, not 0"),
        (
            {"on_nonfinite": "stop"},
            "on_nonfinite must be one of warn, raise, breakpoint, log, not 'stop'",
        ),
        ({"modules": "nope.*"}, "modules='nope.*' matches no module"),
        ({"sample": 1.5}, "sample must be a fraction in (0, 1], not 1.5"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict[str, Any], message: str) -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(UsageError) as info:
        modinspect.watch(model, **kwargs)
    assert str(info.value) == message
    assert hook_counts(model) == [0] * len(hook_counts(model))


def test_existing_log_is_not_overwritten(tmp_path: Path) -> None:
    log = tmp_path / "old.jsonl"
    log.write_text("keep\n")
    with pytest.raises(UsageError, match=f"^log {log} exists; pass overwrite=True to replace it$"):
        modinspect.watch(nn.Linear(3, 2), log=log)
    assert log.read_text() == "keep\n"
    modinspect.watch(nn.Linear(3, 2), log=log, overwrite=True).detach()
    assert read_log(log)[0]["kind"] == "header"


def test_existing_saved_batch_is_refused_at_the_start_with_the_librarys_hint(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "bad.pt"
    saved.write_bytes(b"keep")
    with pytest.raises(
        UsageError, match=f"^save_batch {saved} exists; pass overwrite=True to replace it$"
    ):
        modinspect.watch(nn.Linear(3, 2), save_batch=saved)
    assert saved.read_bytes() == b"keep"
    modinspect.watch(nn.Linear(3, 2), save_batch=saved, overwrite=True).detach()


def test_step_with_an_optimizer_is_refused() -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        modinspect.watch(model, optimizer=opt) as w,
        pytest.raises(UsageError, match=r"^with optimizer=, steps"),
    ):
        w.step()


def test_modules_glob_and_sample(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    with modinspect.watch(
        model, every=1, modules="features.*", sample=0.25, log=tmp_path / "g.jsonl"
    ) as w:
        model(torch.randn(2, 3, 16, 16)).mean().backward()
        w.step()
    record = read_log(tmp_path / "g.jsonl")[1]
    assert [r["name"] for r in record["modules"]] == [f"features.{i}" for i in range(7)]
    conv = record["modules"][0]
    assert sum(conv["histogram"]["counts"]) == conv["count"] // 4


def test_modinspect_report_reads_what_watch_writes(tmp_path: Path) -> None:
    """The contract between the writer and `modinspect report`: a real run's log, its NaN origin included."""
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.jsonl"
    with pytest.warns(NonFiniteWarning), modinspect.watch(model, every=2, log=log) as w:
        for step, x in batches(bad_step=5):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            w.step()
            if step == 6:
                break
    run = modinspect.read_run_log(log)
    source, code = line_of("log")
    assert run.steps == (2, 4, 5, 6)
    bad = run.first_bad
    assert bad is not None and bad.recorded
    assert (bad.step, bad.module, bad.type, bad.phase, bad.op, bad.source, bad.code) == (
        5,
        "1",
        "LogAct",
        "forward",
        "aten::log",
        source,
        code,
    )
    assert invoke("report", log).exit_code == 0
    # An origin without a module (the input already held the NaN) reads back too.
    data = tmp_path / "input.jsonl"
    with modinspect.watch(model, log=data) as w:
        x = torch.randn(5, 4)
        x[0, 0] = float("nan")
        with pytest.warns(NonFiniteWarning, match="already in the model's input"):
            model(x).sum().backward()
            w.step()
    bad = modinspect.read_run_log(data).first_bad
    assert bad is not None and (bad.step, bad.module, bad.cause) == (1, None, "input")


# ---------------------------------------------------------------- the cause: learning rate and update history


def test_learning_rate_blow_up_is_explained_with_the_lr_and_the_update_ratio_of_its_step(
    tmp_path: Path,
) -> None:
    """lr set to 1e30 before step 5's update: step 6's LayerNorm makes the NaN; the message, the record and the
    report say which tensor step 5 blew up, by how much (against the norms torch computes) and with which lr."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    gen = torch.Generator().manual_seed(5)
    norms: dict[int, dict[str, float]] = {}
    log = tmp_path / "lr.jsonl"
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, every=100, optimizer=opt, on_nonfinite="raise", log=log) as w,
    ):
        for step in range(1, 20):
            if step == 5:
                opt.param_groups[0]["lr"] = 1e30
            loss = model(torch.randn(8, 4, generator=gen)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            norms[step] = {
                n: float(p.detach().double().norm()) for n, p in model.named_parameters()
            }
    assert info.value.step == 6 and max(norms) == 5
    ratios = {n: abs(norms[5][n] - norms[4][n]) / norms[4][n] for n in norms[5]}
    tensor = max(ratios, key=lambda n: ratios[n])
    assert ratios[tensor] > 1e20 and math.isfinite(norms[5][tensor])
    explanation = w.explanation
    assert explanation is not None
    head, _, tail = explanation.partition(" its norm (lr 1e+30 in group 0); at step 6 ")
    assert head.startswith(f"step 5 updated `{tensor}` by ") and head.endswith("×")
    assert float(head.split(" by ")[1][:-1]) == pytest.approx(
        ratios[tensor], rel=5e-3
    )  # printed with 3 digits
    assert info.value.origin is not None
    assert tail == f"`{info.value.origin.module}` produced the first NaN/Inf"
    assert str(info.value).endswith(f"; before it, {explanation}")
    record = read_log(log)[1]
    assert record["step"] == 6 and record["nonfinite"]["explanation"] == explanation
    assert record["optimizer"] == [
        {"dampening": 0.0, "lr": 1e30, "momentum": 0.5, "weight_decay": 0.0}
    ]
    # Norms of weights around 1e29 are numbers, not null: float64 where float32 overflows.
    params = {p["name"]: p for p in record["params"]}
    assert params[tensor]["norm"] == pytest.approx(norms[5][tensor], rel=1e-6)
    assert w.report().explanation == explanation


def test_no_explanation_without_a_large_update() -> None:
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, every=100, optimizer=opt, on_nonfinite="raise") as w,
    ):
        for _, x in batches(bad_step=4):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    assert info.value.step == 4 and w.explanation is None and "before it" not in str(info.value)


# ---------------------------------------------------------------- reproducible: the saved batch, weights and RNG


NETS = """
import torch
from torch import nn

class Square(nn.Module):
    def forward(self, x):
        return x * x

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), Square(), nn.Linear(8, 1))
"""


def test_saved_batch_and_weights_reproduce_the_origin_with_stats_input(tmp_path: Path) -> None:
    """A NaN/Inf caused by the weights (lr 1e30 at step 3): the model's own weights give finite outputs on the
    saved batch; the weights saved beside it reproduce the origin watch found: module, op, line."""
    (tmp_path / "nets.py").write_text(NETS)
    spec = importlib.util.spec_from_file_location("watch_nets_weights", tmp_path / "nets.py")
    assert spec is not None and spec.loader is not None
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model = nets.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(6)
    saved = tmp_path / "bad.pt"
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, optimizer=opt, on_nonfinite="raise", save_batch=saved),
    ):
        for step in range(1, 10):
            if step == 3:
                opt.param_groups[0]["lr"] = 1e30
            x = torch.randn(5, 4, generator=gen)
            model(x).mean().backward()
            opt.step()
            opt.zero_grad()
    o = info.value.origin
    assert o is not None
    assert info.value.step == 4 and (o.module, o.op, o.phase) == ("1", "aten::mul", "forward")
    weights = tmp_path / "bad.weights.safetensors"
    from safetensors.torch import load_file

    stored = load_file(weights)
    for (
        name,
        p,
    ) in model.state_dict().items():  # the pre-step weights: the exception left them in place
        assert torch.equal(stored[name], p)
    assert torch.equal(torch.load(saved, weights_only=True), x)
    result = invoke("stats", "nets.py:build", "--input", "bad.pt", "--json", cwd=tmp_path)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.splitlines() == [
        "note: using the weights saved with the batch, bad.weights.safetensors (step 4, before its update); "
        "in training mode, as that step ran"
    ]
    origin = json.loads(result.stdout)["nonfinite_origin"]
    assert (origin["module"], origin["op"], origin["phase"]) == (o.module, o.op, o.phase)
    assert (
        o.source is not None and origin["source"] == "nets.py:7" and o.source.endswith("nets.py:7")
    )
    # Without them, the model's own weights: every activation and gradient finite.
    weights.rename(tmp_path / "elsewhere.safetensors")
    result = invoke("stats", "nets.py:build", "--input", "bad.pt", "--json", cwd=tmp_path)
    assert result.exit_code == 0 and json.loads(result.stdout)["nonfinite_origin"] is None
    assert "note: using the weights" not in result.stderr


DROP_NETS = """
import torch
from torch import nn


class LogAbs(nn.Module):
    def forward(self, x):
        return torch.log(x.abs())  # -inf where dropout zeroed an element


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), LogAbs(), nn.Linear(8, 1))
"""


def test_stats_input_replays_a_saved_training_step_in_training_mode_with_its_dropout_masks(
    tmp_path: Path,
) -> None:
    """A -inf that only dropout makes (log of a zeroed element): `stats --input` of the saved batch runs in
    training mode with the step's RNG state, so the same elements are dropped; `--eval` runs without dropout."""
    (tmp_path / "drop_nets.py").write_text(DROP_NETS)
    spec = importlib.util.spec_from_file_location("watch_drop_nets", tmp_path / "drop_nets.py")
    assert spec is not None and spec.loader is not None
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model = nets.build()
    dropped: list[int] = []
    model[1].register_forward_hook(lambda m, a, out: dropped.append(int((out == 0).sum())))
    torch.manual_seed(3)
    with (
        pytest.raises(NonFiniteError) as info,
        modinspect.watch(model, on_nonfinite="raise", save_batch=tmp_path / "bad.pt") as w,
    ):
        for _ in range(3):
            model(torch.randn(5, 4)).mean().backward()
            w.step()
    o = info.value.origin
    assert o is not None and info.value.step == 1 and (o.module, o.op) == ("2", "aten::log")
    assert dropped[0] > 0  # the training forward's own mask
    result = invoke("stats", "drop_nets.py:build", "--input", "bad.pt", "--json", cwd=tmp_path)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.splitlines() == [
        "note: using the weights saved with the batch, bad.weights.safetensors (step 1, before its update); "
        "in training mode, as that step ran"
    ]
    doc = json.loads(result.stdout)
    assert (doc["nonfinite_origin"]["module"], doc["nonfinite_origin"]["op"]) == ("2", "aten::log")
    log_row = next(m for m in doc["modules"] if m["name"] == "2")
    assert (
        log_row["inf"] == dropped[0]
    )  # the same elements dropped: the step's RNG state was restored
    # --eval: no dropout, every value finite; the saved weights are still used.
    result = invoke(
        "stats", "drop_nets.py:build", "--input", "bad.pt", "--eval", "--json", cwd=tmp_path
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["nonfinite_origin"] is None
    assert result.stderr.splitlines() == [
        "note: using the weights saved with the batch, bad.weights.safetensors (step 1, before its update)"
    ]


# ---------------------------------------------------------------- loop mistakes: one-time warnings, in the report


def drop_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))


def run_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    *,
    zero: str = "none",
    train: bool = True,
    evaluate: str | None = None,
    steps: int = 4,
) -> tuple[list[str], tuple[str, ...]]:
    """A training loop, planted with mistakes or not; returns the LoopWarnings raised and the report's list."""
    from modinspect.watching.watch import LoopWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = modinspect.watch(model, every=2, optimizer=opt)
        for _ in range(steps):
            model.train(train)
            model(torch.randn(5, 4)).square().mean().backward()
            opt.step()
            if zero != "forgotten":
                opt.zero_grad(set_to_none=zero == "none")
            if evaluate is not None:
                model.train(evaluate == "train")
                with torch.no_grad():
                    model(torch.randn(5, 4))
        w.detach()
    loop = [c for c in caught if c.category is LoopWarning]
    # Each one names the user's own line (this file), not a line inside modinspect or torch.
    assert [c.filename for c in loop] == [__file__] * len(loop)
    return [str(c.message) for c in loop], w.report().loop_warnings


NOT_ZEROED = (
    "gradients were not zeroed between steps: they add up over every step since; call "
    "optimizer.zero_grad() once per step (gradient accumulation: one w.step() per optimizer step)"
)
EVAL_STEP = (
    "a training step (a backward) ran with the model in eval mode: dropout and batch norm are inert; "
    "call model.train() first"
)
TRAIN_EVAL = (
    "a forward ran without grad (evaluation) while the model was in train mode: dropout and batch norm "
    "still act as in training; call model.eval() first"
)


@pytest.mark.parametrize("zero", ["none", "zeros"])
def test_a_correct_loop_raises_no_loop_warning(zero: str) -> None:
    model = drop_net()
    assert run_loop(
        model, torch.optim.SGD(model.parameters(), lr=0.01), zero=zero, evaluate="eval"
    ) == ([], ())


def test_gradients_never_zeroed_are_caught_once() -> None:
    model = drop_net()
    assert run_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), zero="forgotten") == (
        [NOT_ZEROED],
        (NOT_ZEROED,),
    )


def test_parameters_missing_from_the_optimizer_are_named() -> None:
    model = drop_net()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.01)  # model[2] never trains
    message = (
        "2 parameter(s) with requires_grad are in no optimizer param group (they never train): "
        "2.weight, 2.bias"
    )
    assert run_loop(model, opt) == ([message], (message,))
    model[2].requires_grad_(False)  # frozen on purpose: fine
    assert run_loop(model, opt) == ([], ())


def test_training_step_in_eval_mode_is_caught() -> None:
    model = drop_net()
    assert run_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), train=False) == (
        [EVAL_STEP],
        (EVAL_STEP,),
    )
    plain = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)
    )  # eval mode changes nothing here
    assert run_loop(plain, torch.optim.SGD(plain.parameters(), lr=0.01), train=False) == ([], ())


def test_evaluation_forward_in_train_mode_is_caught() -> None:
    model = drop_net()
    assert run_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), evaluate="train") == (
        [TRAIN_EVAL],
        (TRAIN_EVAL,),
    )


def test_nan_on_a_logged_step_keeps_exact_counts_from_the_replay(tmp_path: Path) -> None:
    """A sentinel-mode logged step runs `stats`' fast reductions; when it holds the first NaN, its record's
    counts are the exact ones of the replay (the fast sums cannot count NaN)."""
    model = planted()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outs: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    with (
        pytest.warns(NonFiniteWarning),
        modinspect.watch(model, every=5, log=tmp_path / "f.jsonl") as w,
    ):
        for step, x in batches(bad_step=5):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            w.step()
            if step == 5:
                break
    assert w.collector.exact  # after the first NaN/Inf every logged step is exact
    record = read_log(tmp_path / "f.jsonl")[1]
    assert record["step"] == 5 and record["nonfinite"]["module"] == "1"
    row = next(r for r in record["modules"] if r["name"] == "1")
    bad = outs[4]  # step 5's LogAct output, as the user's forward made it
    assert (row["calls"], row["count"], row["nan"]) == (1, bad.numel(), int(torch.isnan(bad).sum()))
    assert row["nan"] > 0


@pytest.mark.parametrize("on_nonfinite", ["warn", "log"])
def test_finite_values_whose_sums_overflow_are_not_a_nan(tmp_path: Path, on_nonfinite: str) -> None:
    """lr x1e6 from step 30: the outputs reach 1e13, whose float32 sums of squares overflow in the logged step's
    fast reductions while every tensor stays finite (step 34), until the loss itself overflows (step 36). The
    first bad step is the one a plain loop, without watch, sees first: not the logged step whose sums overflowed."""
    import runlogs

    def first_bad_without_watch() -> int:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 30 else 1e6)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        for step in range(1, 41):
            out = model(x)
            loss = (out - y).pow(2).mean()
            loss.backward()
            tensors = [out, loss, *(p.grad for p in model.parameters()), *model.parameters()]
            if not all(bool(torch.isfinite(t).all()) for t in tensors if t is not None):
                return step
            opt.step()
            opt.zero_grad()
            sched.step()
        raise AssertionError("the planted blow-up never made a NaN/Inf")

    expected = first_bad_without_watch()
    log = tmp_path / "run.jsonl"
    runlogs.write_real_run(log, on_nonfinite=on_nonfinite)
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]
    bad = [r for r in records if r["nonfinite"] is not None]
    assert expected == 36
    assert bad and bad[0]["step"] == expected, [(r["step"], r["nonfinite"]) for r in bad]
    assert all(r["loss"] is not None for r in records if r["step"] < expected)


def test_the_nonfinite_warning_names_the_users_optimizer_step_with_optimizer_given() -> None:
    torch.manual_seed(0)
    model = ArmedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with (
        warnings.catch_warnings(record=True) as caught,
        modinspect.watch(model, every=5, optimizer=opt) as w,
    ):
        warnings.simplefilter("always")
        for step in range(1, 4):
            model.armed = step == 2
            loss = model(torch.randn(3, 4)).mean()
            loss.backward()
            w.log_loss(loss)
            opt.step()  # the warning's line: the post hook ends the step here
            opt.zero_grad()
    found = [c for c in caught if c.category is NonFiniteWarning]
    assert [str(c.message).split(":")[0] for c in found] == ["first NaN/Inf at step 2"]
    assert [(c.filename, linecache.getline(c.filename, c.lineno).strip()) for c in found] == [
        (__file__, "opt.step()  # the warning's line: the post hook ends the step here")
    ]
