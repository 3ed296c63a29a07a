"""The benchmarks' smoke mode: tiny sizes, one run, so the scripts cannot rot. Timings are not asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def test_stats_benchmark_smoke() -> None:
    import bench_stats

    models = "gpt2,cnn" if _has_transformers() else "cnn"
    lines = bench_stats.main(["--smoke", "--models", models])
    contenders = [line.split("|")[2].strip() for line in lines if line.startswith("| cnn |")]
    assert contenders == ["bare", "modinspect", "item-hooks", "detect_anomaly"]
    ratios = [float(line.split("|")[5]) for line in lines if line.startswith("| cnn |")]
    assert ratios[0] == 1.0 and all(r > 0 for r in ratios)


@pytest.mark.skipif(not _has_transformers(), reason="the diff benchmark builds GPT-2 checkpoints")
def test_diff_benchmark_smoke() -> None:
    import bench_diff

    lines = bench_diff.main(["--smoke"])
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(rows) >= {"modinspect diff", "load both + loop"}
    assert float(rows["load both + loop"].split("|")[5]) == 1.0


@pytest.mark.parametrize("module", ["bench_stats", "bench_diff"])
def test_benchmark_scripts_document_themselves(module: str) -> None:
    mod = __import__(module)
    assert mod.__doc__ and "--smoke" in mod.__doc__
