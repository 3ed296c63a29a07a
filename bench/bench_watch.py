"""watch overhead: training steps (forward, loss, backward, SGD step, zero_grad) watched against unwatched.

Two copies of the same model train side by side in one process, their steps interleaved (bare, watched, bare,
watched, ...), so the ratios hold on a shared machine:
- bare: the training step, nothing else;
- watch: the same inside `modinspect.watch(model, every=E)`, the default on_nonfinite="warn" (one flag
  read per step) with a record every E steps, so each run of E steps holds exactly one logged step;
- watch (log): on_nonfinite="log", no per-step read at all.
A run is E steps of each contender; the table gives seconds per step, and the median of the per-run ratios.

    python bench/bench_watch.py            # GPT-2 small (4x128 tokens) and a ResNet-style CNN, E = 2, 3 runs
    python bench/bench_watch.py --smoke    # tiny models, one run: checks the script still works
    python bench/bench_watch.py --device cuda   # the same on a GPU (each run ends with a synchronize);
                                                # without CUDA it prints one line saying it skipped
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from bench_stats import build, gpu_header, loss_of
from torch import nn

import modinspect


def trainer(model: nn.Module, inputs: tuple[Any, ...]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        loss_of(model(*inputs)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(name: str, runs: int, every: int, smoke: bool, device: str) -> dict[str, list[float]]:
    """Seconds per step of each contender, run by run."""
    model, inputs = build(name, smoke)
    model.train()
    cuda = device.startswith("cuda")
    if cuda:
        model, inputs = model.to(device), tuple(t.to(device) for t in inputs)
    models = {key: copy.deepcopy(model) for key in ("bare", "watch", "watch (log)")}
    steps = {key: trainer(m, inputs) for key, m in models.items()}
    watches = {"watch": modinspect.watch(models["watch"], every=every),
               "watch (log)": modinspect.watch(models["watch (log)"], every=every, on_nonfinite="log")}
    times: dict[str, list[float]] = {key: [] for key in models}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, step in steps.items():  # warm-up: one whole window each
                for _ in range(every):
                    step()
                    if key in watches:
                        watches[key].step()
            for _ in range(runs):
                for key, step in steps.items():
                    if cuda:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(every):
                        step()
                        if key in watches:
                            watches[key].step()
                    if cuda:
                        torch.cuda.synchronize()
                    times[key].append((time.perf_counter() - start) / every)
    finally:
        for w in watches.values():
            w.detach()
    assert all(w.records == runs + 1 for w in watches.values())  # one record per run (and the warm-up's)
    return times


def table(name: str, times: dict[str, list[float]]) -> list[str]:
    bare = times["bare"]
    lines = ["| model | contender | median s per step | min–max s | × bare (median of paired ratios) |",
             "| --- | --- | --- | --- | --- |"]
    for key, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, bare, strict=True))
        lines.append(f"| {name} | {key} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} "
                     f"| {ratio:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--models", default="gpt2,cnn")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    runs = 1 if args.smoke else args.runs
    lines, available = gpu_header(args.device)
    if not available:
        print("\n".join(lines))
        return lines
    for name in args.models.split(","):
        lines += table(name, measure(name, runs, args.every, args.smoke, args.device))
    lines.append(f"A record every {args.every} steps; each run is {args.every} steps of each contender, interleaved.")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
