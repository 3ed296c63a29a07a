"""watch overhead: training steps (forward, loss, backward, SGD step, zero_grad) watched against unwatched.

Copies of the same model train side by side in one process, their steps interleaved one by one (bare,
watched, bare, watched, ...), so the ratios hold on a shared machine:
- bare: the training step, nothing else;
- watch: the same inside `modinspect.watch(model, every=E)`: the default mode="sentinel" and
  on_nonfinite="warn" (one flag read per step), full statistics on one step in E;
- watch (log): the same with on_nonfinite="log", no per-step read at all;
- watch (window), with --window: mode="window", every step's statistics (the behaviour before the sentinel).
Each row gives seconds per step over all the steps, the ratio of the totals against bare (logged steps
included, one in E), the median of the paired per-step ratios (robust to load spikes), and the logged step alone: the median ratio of a logged step to the bare step it ran
beside. The last row is `stats` on one batch (forward and backward, `collect_stats`) against a bare forward
and backward: the logged step's goal is to cost no more than that.

    python bench/bench_watch.py            # GPT-2 small (4x128 tokens) and a ResNet-style CNN, 200 steps, E = 100
    python bench/bench_watch.py --smoke    # tiny models, a few steps: checks the script still works
    python bench/bench_watch.py --threads 1 --models cnn   # one torch thread: steadier on a busy machine
    python bench/bench_watch.py --device cuda   # the same on a GPU (each step ends with a synchronize);
                                                # without CUDA it prints one line saying it skipped
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from bench_stats import bare, build, gpu_header, loss_of
from torch import nn

import modinspect
from modinspect.run.collector import StatsOptions
from modinspect.run.stats import collect_stats

WARMUP = 3


def trainer(model: nn.Module, inputs: tuple[Any, ...]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model(*inputs)
        # A mean, not bench_stats' sum: a sum over 6.4M logits with this lr diverges within 10 steps, and Inf,
        # NaN and denormal weights would time float arithmetic, not watch.
        (loss_of(out) / (out.logits if hasattr(out, "logits") else out).numel()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def built(name: str, smoke: bool, tokens: str | None) -> tuple[nn.Module, tuple[Any, ...]]:
    """bench_stats' model and batch; `tokens` ("BxT") replaces GPT-2's 4x128 token batch."""
    model, inputs = build(name, smoke)
    if tokens and name == "gpt2" and not smoke:
        b, t = (int(v) for v in tokens.lower().split("x"))
        inputs = (
            torch.randint(
                0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)
            ),
        )
    return model, inputs


def measure(
    name: str,
    steps: int,
    every: int,
    smoke: bool,
    device: str,
    window: bool,
    tokens: str | None = None,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Seconds of each contender's steps, step by step (after WARMUP steps each)."""
    model, inputs = built(name, smoke, tokens)
    model.train()
    cuda = device.startswith("cuda")
    if cuda:
        model, inputs = model.to(device), tuple(t.to(device) for t in inputs)
    keys = ["bare", "watch", "watch (log)"] + (["watch (window)"] if window else [])
    models = {key: copy.deepcopy(model) for key in keys}
    train = {key: trainer(m, inputs) for key, m in models.items()}
    watches = {
        "watch": modinspect.watch(models["watch"], every=every),
        "watch (log)": modinspect.watch(models["watch (log)"], every=every, on_nonfinite="log"),
    }
    if window:
        watches["watch (window)"] = modinspect.watch(
            models["watch (window)"], every=every, mode="window"
        )
    times: dict[str, list[float]] = {key: [] for key in keys}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(WARMUP + steps):
                for key, step in train.items():
                    if cuda:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    step()
                    if key in watches:
                        watches[key].step()
                    if cuda:
                        torch.cuda.synchronize()
                    if i >= WARMUP:
                        times[key].append(time.perf_counter() - start)
                if progress and i >= WARMUP and (i - WARMUP + 1) % 20 == 0:
                    report_progress(i - WARMUP + 1, times)
    finally:
        for w in watches.values():
            w.detach()
    assert all(w.records >= (WARMUP + steps) // every for w in watches.values())
    return times


def report_progress(done: int, times: dict[str, list[float]]) -> None:
    """The running ratios so far (--progress), on stderr: a long run cut short still says something."""
    bare_times = times["bare"]
    ratios = {
        key: f"x{sum(v) / sum(bare_times):.3f} (median step x"
        f"{statistics.median(a / b for a, b in zip(v, bare_times, strict=True)):.3f})"
        for key, v in times.items()
        if key != "bare"
    }
    print(f"{done} steps: {ratios}", file=sys.stderr, flush=True)


def stats_ratio(name: str, smoke: bool, device: str, runs: int, tokens: str | None = None) -> float:
    """`stats` on one batch (forward + backward) over a bare forward + backward, median of interleaved pairs."""
    model, inputs = built(name, smoke, tokens)
    model.train()
    if device.startswith("cuda"):
        model, inputs = model.to(device), tuple(t.to(device) for t in inputs)
    ratios = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        bare(model, inputs)
        base = time.perf_counter() - start
        start = time.perf_counter()
        collect_stats(model, [(inputs, {})], options=StatsOptions(train=True), device=device)
        ratios.append((time.perf_counter() - start) / base)
    return statistics.median(ratios[1:])


def table(name: str, times: dict[str, list[float]], every: int, stats: float) -> list[str]:
    bare_times = times["bare"]
    logged = [i for i in range(len(bare_times)) if (i + WARMUP + 1) % every == 0]
    lines = [
        "| model | contender | mean s per step | × bare (all steps) | × bare (median step) | "
        "logged step × bare step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, values in times.items():
        ratio = sum(values) / sum(bare_times)
        # The median of the paired per-step ratios: robust to a load spike on a shared machine.
        median = statistics.median(v / b for v, b in zip(values, bare_times, strict=True))
        alone = (
            statistics.median(values[i] / bare_times[i] for i in logged)
            if logged and key != "bare"
            else 1.0
        )
        lines.append(
            f"| {name} | {key} | {statistics.fmean(values):.3f} | {ratio:.3f} | {median:.3f} | {alone:.2f} |"
        )
    lines.append(f"| {name} | `stats` (one batch, fwd+bwd) | | | | {stats:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--models", default="gpt2,cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--window", action="store_true", help="also mode='window' (every step's statistics)"
    )
    parser.add_argument(
        "--progress", action="store_true", help="print the running ratios every 20 steps (stderr)"
    )
    parser.add_argument("--stats-runs", type=int, default=5, help="pairs for the `stats` row")
    parser.add_argument("--tokens", default=None, help="GPT-2's batch as BxT (default 4x128)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default); 1 is steadier on a shared machine",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, every = (4, 2) if args.smoke else (args.steps, args.every)
    lines, available = gpu_header(args.device)
    if not available:
        print("\n".join(lines))
        return lines
    for name in args.models.split(","):
        times = measure(
            name, steps, every, args.smoke, args.device, args.window, args.tokens, args.progress
        )
        label = f"{name} {args.tokens}" if args.tokens and name == "gpt2" else name
        lines += table(
            label,
            times,
            every,
            stats_ratio(
                name, args.smoke, args.device, 1 if args.smoke else args.stats_runs, args.tokens
            ),
        )
        print("\n".join(lines[-6:]), flush=True)
    lines.append(
        f"{steps} steps of each contender, interleaved step by step, after {WARMUP} warm-up steps; "
        f"a record every {every} steps; {torch.get_num_threads()} torch thread(s)."
    )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
