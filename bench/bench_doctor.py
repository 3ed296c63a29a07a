"""What `modinspect doctor` costs on GPT-2 small (124M, random weights): the static checks, and the whole run
against a bare forward+backward on the same input.

    python bench/bench_doctor.py            # GPT-2 small, input (4, 128) with labels, 5 runs each
    python bench/bench_doctor.py --smoke    # a tiny GPT-2, one run: checks the script still works

Targets (issue 24): the static checks under 1 s after the model is built; the run-time checks one forward and
backward (the ratio column: doctor's whole run over a bare forward+backward, paired run by run).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import bench_parser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import modinspect
from modinspect.analysis.doctor_code import global_tensor_findings
from modinspect.run.doctor import static_findings


def build(smoke: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256) if smoke else GPT2Config()
    model = GPT2LMHeadModel(config).train()
    ids = torch.randint(
        0,
        config.vocab_size,
        (2, 16) if smoke else (4, 128),
        generator=torch.Generator().manual_seed(1),
    )
    return model, {"input_ids": ids, "labels": ids}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bare(model: torch.nn.Module, kwargs: dict[str, Any]) -> None:
    out = model(**kwargs)
    out.loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, "a tiny GPT-2, one run", runs=5).parse_args(argv)
    runs = 1 if args.smoke else args.runs
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, kwargs = build(args.smoke)
    bare(model, kwargs)  # warm-up: allocator, kernels
    static = [
        timed(lambda: (static_findings(model, "training"), global_tensor_findings(model)))
        for _ in range(runs)
    ]
    pairs = []
    findings: tuple[Any, ...] = ()
    for _ in range(runs):
        b = timed(lambda: bare(model, kwargs))
        reports: list[Any] = []
        d = timed(lambda reports=reports: reports.append(modinspect.doctor(model, ((), kwargs))))
        findings = reports[0].findings
        pairs.append((b, d))
    import tempfile

    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        stored = [timed(lambda: modinspect.doctor(str(path))) for _ in range(runs)]
        size = path.stat().st_size
    label = "tiny GPT-2" if args.smoke else "GPT-2 small (124M)"
    med = statistics.median
    lines = [
        f"doctor on {label}, input {tuple(kwargs['input_ids'].shape)} with labels, {runs} run(s), "
        f"{torch.get_num_threads()} threads",
        "",
        "| what | wall s (median, min–max) | CPU s (median) |",
        "|---|---|---|",
        f"| static checks | {med(s[0] for s in static):.3f} ({min(s[0] for s in static):.3f}–"
        f"{max(s[0] for s in static):.3f}) | {med(s[1] for s in static):.3f} |",
        f"| bare forward+backward | {med(p[0][0] for p in pairs):.3f} | {med(p[0][1] for p in pairs):.3f} |",
        f"| doctor, whole run | {med(p[1][0] for p in pairs):.3f} ({min(p[1][0] for p in pairs):.3f}–"
        f"{max(p[1][0] for p in pairs):.3f}) | {med(p[1][1] for p in pairs):.3f} |",
        f"| checkpoint checks ({size / 1e6:.0f} MB safetensors, no code) | {med(t[0] for t in stored):.3f} | "
        f"{med(t[1] for t in stored):.3f} |",
        "",
        f"doctor / bare (paired, median): {med(p[1][0] / p[0][0] for p in pairs):.2f}×; "
        f"findings: {len(findings)} ({', '.join(sorted({f.id for f in findings})) or 'none'})",
    ]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
