"""`watch` under `torchrun --nproc-per-node 2` (gloo on the CPU): the ranks' statistics merged exactly.

One launch of tests/ranks_worker.py trains the same model on two ranks, each on half of every batch,
with DDP and with FSDP2's fully_shard; the merged log must equal, value by value, the log of one process
training on the whole batches. A NaN planted on rank 1 stops both ranks at its step, named by module,
op, line and rank.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ranks_worker
from conftest import invoke
from ranks_worker import BAD_RANK, BAD_STEP, BATCH, train

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this torch build",
)


def shown(path: Path) -> str:
    """A file as the report names it: relative to the working directory when under it, else absolute
    (the suite's working directory is not always the repository's)."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    proc = torchrun(str(HERE / "ranks_worker.py"), str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seen(out: Path, rank: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / f"rank{rank}.json").read_text())
    return result


def close(a: Any, b: Any, what: str) -> None:
    if a is None or b is None:
        assert a is b, what
    else:
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{what}: {a} != {b}"


def same_log(merged: list[dict[str, Any]], single: list[dict[str, Any]]) -> None:
    assert merged[0]["world_size"] == 2 and single[0]["world_size"] == 1
    assert (
        merged[0]["model"] == single[0]["model"] == "Sequential"
    )  # not DistributedDataParallel, FSDPSequential
    assert [r["step"] for r in merged[1:]] == [r["step"] for r in single[1:]] == [2, 4]
    for m_rec, s_rec in zip(merged[1:], single[1:], strict=True):
        step = m_rec["step"]
        close(m_rec["loss"], s_rec["loss"], f"step {step} loss")
        assert [m["name"] for m in m_rec["modules"]] == [m["name"] for m in s_rec["modules"]]
        for m, s in zip(m_rec["modules"], s_rec["modules"], strict=True):
            where = f"step {step} module {m['name']!r}"
            for key in ("calls", "count", "nan", "inf", "grad_nan", "grad_inf", "type"):
                assert m[key] == s[key], f"{where} {key}"
            for key in ("mean", "std", "min", "max", "zero_fraction", "dead_fraction", "grad_norm"):
                close(m[key], s[key], f"{where} {key}")
        assert [p["name"] for p in m_rec["params"]] == [p["name"] for p in s_rec["params"]]
        for p, q in zip(m_rec["params"], s_rec["params"], strict=True):
            for key in ("norm", "grad_norm", "update_norm", "update_ratio"):
                close(p[key], q[key], f"step {step} param {p['name']!r} {key}")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    log = tmp_path_factory.mktemp("single") / "one.jsonl"
    train(ranks_worker.build(), 0, 1, log)
    return lines(log)


def test_ddp_merge_equals_one_process_on_the_whole_batch(
    launched: Path, single: list[dict[str, Any]]
) -> None:
    merged = lines(launched / "ddp.jsonl")
    same_log(merged, single)
    # Names are the model's, not DDP's (`module.0.weight`).
    assert merged[1]["params"][0]["name"] == "0.weight" and merged[1]["modules"][0]["name"] == ""
    # Each rank saw half of the logged step's batch: the merged count is the whole batch's.
    assert merged[1]["modules"][1]["count"] == BATCH * 16
    assert seen(launched, 0)["ddp"]["steps"] == seen(launched, 1)["ddp"]["steps"] == 4


def test_fsdp2_sharded_parameters_merge_to_the_whole_norms(
    launched: Path, single: list[dict[str, Any]]
) -> None:
    same_log(lines(launched / "fsdp.jsonl"), single)


def test_only_rank_0_writes_the_log(launched: Path) -> None:
    assert sorted(p.name for p in launched.glob("*.jsonl")) == [
        "ddp.jsonl",
        "fsdp.jsonl",
        "nan.jsonl",
        "nan_log.jsonl",
    ]
    assert lines(launched / "ddp.jsonl")[0]["kind"] == "header"
    assert len(lines(launched / "ddp.jsonl")) == 3  # the header and two records, not two of each


def test_nan_on_one_rank_stops_every_rank_at_its_step(launched: Path) -> None:
    number = next(
        i
        for i, text in enumerate((HERE / "ranks_worker.py").read_text().splitlines(), start=1)
        if text.rstrip().endswith("# fault: poison")
    )
    source = f"{shown(HERE / 'ranks_worker.py')}:{number}"
    for rank in (0, 1):
        s = seen(launched, rank)["nan"]
        assert s["nonfinite_step"] == BAD_STEP and s["steps"] == BAD_STEP - 1
        assert s["error"].startswith(
            f"first NaN/Inf at step {BAD_STEP}: 4 (Poison), forward, aten::log at "
        )
        assert s["error"].endswith(
            f", on rank {BAD_RANK}; batch saved to {launched / 'bad_batch.pt'}"
        )
        assert "ranks_worker.py:" + str(number) in s["error"]
    records = lines(launched / "nan.jsonl")
    assert [r["step"] for r in records[1:]] == [2, 3]
    origin = records[2]["nonfinite"]
    assert origin["module"] == "4" and origin["op"] == "aten::log" and origin["rank"] == BAD_RANK
    assert origin["source"].endswith(f"ranks_worker.py:{number}"), (origin["source"], source)
    assert records[2]["modules"][5]["nan"] > 0
    # `modinspect report` names the rank too.
    result = invoke("report", launched / "nan.jsonl", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["first_bad"]["rank"] == BAD_RANK
    text = invoke("report", launched / "nan.jsonl")
    assert (
        f"First bad step {BAD_STEP}: NaN/Inf produced by 4 (Poison) in forward, op aten::log at "
        in text.stdout
    )
    assert f"(on rank {BAD_RANK})" in text.stdout
    # The batch saved is rank 1's own half of step 3's batch, ready for `modinspect stats --input`.
    x, _ = ranks_worker.batches(BAD_RANK, 2)[BAD_STEP - 1]
    saved = torch.load(launched / "bad_batch.pt", weights_only=True)
    assert torch.equal(saved, x)


def test_nan_logged_without_per_step_reads_names_its_rank(launched: Path) -> None:
    """on_nonfinite="log": no flag is read per step; the window's record names the module and the rank."""
    for rank in (0, 1):
        s = seen(launched, rank)["nan_log"]
        assert (
            s["error"] is None and s["steps"] == 4 and s["nonfinite_step"] == 4
        )  # the record's step
    records = lines(launched / "nan_log.jsonl")
    assert [r["step"] for r in records[1:]] == [2, 4] and records[1]["nonfinite"] is None
    origin = records[2]["nonfinite"]
    assert (origin["module"], origin["type"], origin["phase"], origin["rank"]) == (
        "4",
        "Poison",
        "forward",
        BAD_RANK,
    )
    poison = records[2]["modules"][5]
    # Step 3: rank 1's half of the batch (4 rows of 16, log of values below 0); step 4: the whole batch on both
    # ranks, whose weights the all-reduced NaN gradient of step 3 has reached.
    assert poison["name"] == "4" and poison["nan"] == BATCH // 2 * 16 + BATCH * 16


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_stats_under_torchrun_equals_one_process_on_the_whole_batch(
    tmp_path: Path, loss: str
) -> None:
    """`torchrun … -m modinspect stats`: each rank takes half of the batch; rank 0 prints the merged report."""
    batch = tmp_path / "batch.pt"
    torch.manual_seed(3)
    x = torch.randn(BATCH, 6)
    x[:, 0] -= 3.0  # some ReLU units fire on one half of the batch only
    torch.save(x, batch)
    model = f"{HERE / 'ranks_worker.py'}:build"
    proc = torchrun(
        "-m",
        "modinspect",
        "stats",
        model,
        "--input",
        str(batch),
        "--loss",
        loss,
        "--json",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(proc.stdout)  # one document: rank 1 prints nothing
    result = invoke(
        "stats", model, "--input", str(batch), "--loss", loss, "--json", "--device", "cpu"
    )
    assert result.exit_code == 0, result.stderr
    single = json.loads(result.stdout)
    assert merged["inputs"].endswith("rank 0 of 2 takes 1/2 of each batch")
    assert [m["name"] for m in merged["modules"]] == [m["name"] for m in single["modules"]]
    for m, s in zip(merged["modules"], single["modules"], strict=True):
        for key in (
            "calls",
            "count",
            "nan",
            "inf",
            "units",
            "grad_nan",
            "grad_inf",
            "param_grad_nan",
            "flags",
        ):
            assert m[key] == s[key], (m["name"], key)
        for key in (
            "mean",
            "std",
            "min",
            "max",
            "mean_abs",
            "zero_fraction",
            "dead_fraction",
            "grad_norm",
            "param_grad_norm",
        ):
            close(m[key], s[key], f"{m['name']!r} {key}")


def test_stats_under_torchrun_names_the_rank_whose_slice_held_the_nan(tmp_path: Path) -> None:
    """Rank 1's half of the batch makes the NaN; rank 0 only receives NaN gradients from the all-reduce.

    The origin is rank 1's own (module, op, line) and `--json` says `"rank": 1`.
    """
    number = next(
        i
        for i, text in enumerate((HERE / "ranks_worker.py").read_text().splitlines(), start=1)
        if text.rstrip().endswith("# fault: root")
    )
    batch = tmp_path / "batch.pt"
    x = torch.rand(BATCH, 6) + 0.1
    x[BATCH // 2 + 1, 2] = -1.0  # one negative value, in rank 1's rows
    torch.save(x, batch)
    model = f"{HERE / 'ranks_worker.py'}:build_root"
    proc = torchrun(
        "-m", "modinspect", "stats", model, "--input", str(batch), "--json", "--device", "cpu"
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["nonfinite_origin"] == {
        "module": "0",
        "type": "Root",
        "phase": "forward",
        "cause": "produced",
        "passed_on": ["1", "2", "3", ""],
        "op": "aten::sqrt",
        "source": f"{shown(HERE / 'ranks_worker.py')}:{number}",
        "code": "return torch.sqrt(x)  # fault: root",
        "node": None,
        "created_at": None,
        "created_code": None,
        "tensor": None,
        "detail": None,
        "rank": 1,
    }
    assert doc["backward_origin"] is None
    assert next(m for m in doc["modules"] if m["name"] == "0")["nan"] == 1
    # One process on the whole batch: the same origin, no rank.
    single = invoke("stats", model, "--input", str(batch), "--json", "--device", "cpu")
    assert single.exit_code == 1
    assert json.loads(single.stdout)["nonfinite_origin"] == {
        **doc["nonfinite_origin"],
        "rank": None,
    }
