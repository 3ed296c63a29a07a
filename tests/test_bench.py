"""The benchmarks' smoke mode: tiny sizes, one run, so the scripts cannot rot. Timings are not asserted.

`python bench/run_all.py --smoke` runs every benchmark's `main(["--smoke"])` once, each in its own process;
the tests below read its tables section by section rather than run each script a second time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import run_all


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = (
    pytest.mark.bench_smoke
)  # deselected by default (pyproject's addopts); .ci/run runs it separately

needs_transformers = pytest.mark.skipif(
    not _has_transformers(), reason="the benchmarks build GPT-2 models"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """BENCHMARKS.md of a smoke run, as {section heading: its lines}; "" is the part before the first section."""
    out = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    lines = run_all.main(["--smoke", "--out", str(out)])
    text = out.read_text()
    assert text == "\n".join(lines).rstrip() + "\n"
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:]
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def section(report: dict[str, list[str]], key: str) -> list[str]:
    return report[run_all.PARTS[key][2]]


def column(rows: list[dict[str, str]], name: str) -> list[str]:
    return [row[name] for row in rows]


@needs_transformers
def test_run_all_writes_machine_versions_and_every_target(report: dict[str, list[str]]) -> None:
    assert report[""][0] == "# Benchmarks"
    assert any(line.startswith("**Smoke run") for line in report[""])
    machine = {
        cells[0]: cells[1]
        for cells in (
            run_all.cells(line)
            for line in report["Machine and versions"]
            if line.startswith("| ") and "---" not in line
        )
    }
    assert set(machine) >= {
        "CPU",
        "RAM",
        "GPU",
        "OS",
        "python",
        "torch",
        "modinspect",
        "transformers",
        "safetensors",
        "torchinfo",
    }
    assert machine["torch"] == torch.__version__
    assert list(report)[1:] == [
        "Machine and versions",
        "Targets",
        run_all.MISSED_HEADING,
        *[h for _, _, h in run_all.PARTS.values()],
        "What each benchmark runs",
    ]
    targets = run_all.table_rows(report["Targets"])
    scale = [
        f"{what} of 2,000 tensors, {names}"
        for names in ("flat names", "layered names", "10-shard index")
        for what in ("`tree`", "`tree --json`")
    ]
    prefixes = [
        "tree on safetensors",
        "tree on a zip .pth",
        "`modinspect --help`",
        "`modinspect tree x.safetensors`",
        "stats: ",
        "stats hooks cheaper than `.item()` hooks (issue 14), GPT-2 small",
        "stats hooks cheaper than `.item()` hooks (issue 14), small ResNet-style CNN",
        "stats on a GPU: ",
        "diff: ",
        "diff of two changed GPT-2 files",
        "diff of two identical GPT-2",
        *scale,
        "diff at scale: diff of two 4,000-tensor files",
        "load at scale: load plan, 4,000 tensors",
        "`tree` of a 7B-size GGUF costs what a safetensors header costs",
    ]
    assert len(targets) == len(prefixes)
    assert all(t.startswith(p) for t, p in zip(column(targets, "target"), prefixes, strict=True))
    assert set(column(targets, "met?")) <= {"**met**", "**not met**", "pending"}
    gpu = targets[7]["met?"]
    assert (gpu == "pending") == (not torch.cuda.is_available())


@needs_transformers
def test_tree_benchmark_smoke(report: dict[str, list[str]]) -> None:
    lines = section(report, "tree")
    rows = run_all.table_rows(lines)
    contenders = [(row["file"].split(",")[0], row["contender"]) for row in rows]
    expected = [
        ("GPT-2 safetensors", "modinspect tree --json"),
        ("GPT-2 safetensors", "safe_open + Σ shapes"),
        ("GPT-2 zip .pth", "modinspect tree --json"),
        ("GPT-2 zip .pth", "torch.load(mmap=True) + Σ numel"),
        ("sparse safetensors", "modinspect tree --json"),
        ("sparse safetensors", "safe_open + Σ shapes"),
    ]
    torchinfo = [("GPT-2 built from its code", "torchinfo summary()")]
    has_torchinfo = any(line.startswith("torchinfo's summary() call alone") for line in lines)
    assert contenders == expected + (torchinfo if has_torchinfo else [])
    if not has_torchinfo:
        assert (
            "torchinfo rows skipped: torchinfo is not installed (pip install '.[bench]')" in lines
        )
    # modinspect counts tied weights once on every file; a naive sum after torch.load and torchinfo do not.
    right = {(row["file"].split(",")[0], row["contender"]): row["right?"] for row in rows}
    assert all(right[key] == "yes" for key in expected if not key[1].startswith("torch.load"))
    assert right["GPT-2 zip .pth", "torch.load(mmap=True) + Σ numel"].startswith("**no**: true ")
    if has_torchinfo:
        assert right[torchinfo[0]].startswith("**no**: true ")
    assert all("KiB on disk" in row["file"] for row in rows if row["file"].startswith("sparse"))
    assert any(
        line.startswith("modinspect on the ") and "larger sparse file: time × " in line
        for line in lines
    )


@needs_transformers
def test_diff_benchmark_smoke(report: dict[str, list[str]]) -> None:
    rows = {row["contender"]: row for row in run_all.table_rows(section(report, "diff"))}
    assert list(rows) == [
        "modinspect diff",
        "load both + loop",
        "cat a b > /dev/null",
        "modinspect diff, identical files",
        "cmp a a2",
    ]
    assert float(rows["load both + loop"]["time × loop"]) == 1.0
    assert (
        float(rows["cat a b > /dev/null"]["time × cat"])
        == float(rows["cmp a a2"]["time × cmp"])
        == 1.0
    )


def test_scale_benchmark_smoke(report: dict[str, list[str]]) -> None:
    rows = run_all.table_rows(section(report, "scale"))
    cases = list(dict.fromkeys(row["case"] for row in rows))
    assert cases == [
        "2,000 tensors, flat names",
        "2,000 tensors, layered names",
        "2,000 tensors, 10-shard index",
        "diff of two 4,000-tensor files",
        "load plan, 4,000 tensors",
    ]
    for case in cases:  # the base of each case runs first
        assert float(next(row for row in rows if row["case"] == case)["time × base"]) == 1.0
    assert [row["contender"] for row in rows if row["case"] == cases[0]] == [
        "header parse",
        "modinspect tree --json",
        "modinspect tree",
    ]


@needs_transformers
def test_stats_benchmark_smoke(report: dict[str, list[str]]) -> None:
    rows = run_all.table_rows(section(report, "stats"))
    for model in ("gpt2", "cnn"):
        mine = [row for row in rows if row["model"] == model]
        assert column(mine, "contender") == [
            "bare",
            "modinspect",
            "item-hooks",
            "empty-hooks",
            "detect_anomaly",
        ]
        ratios = [float(r) for r in column(mine, "× bare (median of paired ratios)")]
        assert ratios[0] == 1.0 and all(r > 0 for r in ratios)


@needs_transformers
def test_watch_benchmark_smoke(report: dict[str, list[str]]) -> None:
    rows = run_all.table_rows(section(report, "watch"))
    for model in ("gpt2", "cnn"):
        mine = [row for row in rows if row["model"] == model]
        assert column(mine, "contender") == [
            "bare",
            "watch",
            "watch (log)",
            "`stats` (one batch, fwd+bwd)",
        ]
        ratios = [float(r) for r in column(mine, "× bare (all steps)")[:3]]
        assert ratios[0] == 1.0 and all(r > 0 for r in ratios)
        alone = [float(r) for r in column(mine, "logged step × bare step")]
        assert alone[0] == 1.0 and all(r > 0 for r in alone)


@needs_transformers
def test_startup_benchmark_smoke(report: dict[str, list[str]]) -> None:
    rows = run_all.table_rows(section(report, "startup"))
    assert column(rows, "command") == [
        "python -c pass",
        'python -c "import torch"',
        "modinspect --help",
        "modinspect tree x.safetensors",
    ]
    assert float(rows[1]["time × import torch"]) == 1.0


@needs_transformers
def test_gpu_section_is_pending_without_cuda(report: dict[str, list[str]]) -> None:
    lines = section(report, "stats-gpu")
    if torch.cuda.is_available():
        rows = run_all.table_rows(lines)
        assert {row["contender"] for row in rows} == {
            "bare",
            "modinspect",
            "item-hooks",
            "empty-hooks",
            "detect_anomaly",
        }
        assert all(row["device→host syncs per step"].isdigit() for row in rows)
    else:
        assert lines[1].startswith("**Pending a session with a GPU.**")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_stats_benchmark_on_cuda_skips_cleanly_without_it() -> None:
    import bench_stats

    assert bench_stats.main(["--smoke", "--device", "cuda"]) == [
        f"GPU: skipped, no CUDA device is available to this torch ({torch.__version__})"
    ]


def test_smoke_run_never_overwrites_benchmarks_md(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--smoke"])
    assert exc.value.code == 2
    assert "--smoke needs --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module",
    [
        "bench_stats",
        "bench_diff",
        "bench_tree",
        "bench_startup",
        "bench_scale",
        "bench_dequant",
        "run_all",
    ],
)
def test_benchmark_scripts_document_themselves(module: str) -> None:
    mod = __import__(module)
    assert mod.__doc__ and "--smoke" in mod.__doc__


def test_hostile_benchmark_smoke(report: dict[str, list[str]]) -> None:
    lines = section(report, "hostile")
    measures = [row["measure"] for row in run_all.table_rows(lines) if "measure" in row]
    assert measures == [
        "slowest file",
        "largest peak RSS",
        "median time, median peak RSS",
        "files over either goal",
        "exits other than 0, 1, 2 (crashes)",
    ]
    assert next(line for line in lines if line).startswith(
        "4 hostile files, each opened by one `modinspect` process"
    )


@needs_transformers
def test_the_gguf_benchmark_counts_every_contender_right(report: dict[str, list[str]]) -> None:
    rows = run_all.table_rows(section(report, "gguf"))
    assert column(rows, "contender") == [
        "modinspect tree (GGUF)",
        "modinspect tree (safetensors)",
        "gguf.GGUFReader (GGUF)",
        "safe_open (safetensors)",
    ]
    # The smoke model: 2 blocks of 256 wide, FFN 768, vocab 512: its true count, from each reader.
    embd, ffn, vocab = 256, 768, 512
    truth = 2 * vocab * embd + embd + 2 * (4 * embd * embd + 3 * ffn * embd + 2 * embd)
    assert column(rows, "params") == [f"{truth:,}"] * 4
    assert column(rows, "right") == ["yes"] * 4


@needs_transformers
def test_the_dequantised_diff_benchmark_agrees_with_gguf_py(report: dict[str, list[str]]) -> None:
    lines = section(report, "dequant")
    rows = run_all.table_rows(lines)
    assert column(rows, "contender") == [
        "modinspect diff (Q8_0)",
        "gguf-py dequantize all (Q8_0)",
        "modinspect diff (Q4_K)",
        "gguf-py dequantize all (Q4_K)",
    ]
    assert [line.rsplit(": ", 1)[1] for line in lines if "worst relative errors agree" in line] == [
        "yes",
        "yes",
    ]
