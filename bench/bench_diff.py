"""diff: `modinspect diff` against loading both files and looping in Python, wall time and peak RSS.

Each contender runs in its own process (peak RSS from wait4), interleaved run by run:
- modinspect: `python -m modinspect diff a.safetensors b.safetensors --json`;
- load-and-loop: `safetensors.torch.load_file` both files, then max/mean |a-b| per tensor in torch.

    python bench/bench_diff.py            # two GPT-2-size (124M parameter) checkpoints
    python bench/bench_diff.py --smoke    # tiny checkpoints, one run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import run_process

LOOP = """
import sys
import torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
for name, ta in a.items():
    tb = b.get(name)
    if tb is not None and ta.shape == tb.shape:
        d = (ta.double() - tb.double()).abs()
        d.max().item(), d.mean().item()
"""


def make_checkpoints(folder: Path, smoke: bool) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512) if smoke else GPT2Config()
    model = GPT2LMHeadModel(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_file(state, str(a))
    with torch.no_grad():
        for name in list(state)[::10]:
            state[name] = state[name] + 1e-3
    save_file(state, str(b))
    return a, b


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process; exit 1 (the files differ) is a success."""
    result = run_process(cmd, ok_codes=(0, 1))
    return result.wall, result.rss_mib


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make:
        make_checkpoints(Path(args.make), args.smoke)
        return []
    runs = 1 if args.smoke else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        # Built in a child process: a forked child's peak RSS counts the parent's pages until exec,
        # so the measuring parent must stay small.
        subprocess.run([sys.executable, __file__, "--make", tmp] + (["--smoke"] if args.smoke else []), check=True,
                       stderr=subprocess.DEVNULL)
        a, b = Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"
        size = a.stat().st_size
        contenders = {
            "modinspect diff": [sys.executable, "-m", "modinspect", "diff", str(a), str(b), "--json"],
            "load both + loop": [sys.executable, "-c", LOOP, str(a), str(b)],
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
        for _ in range(runs):
            for key, cmd in contenders.items():
                results[key].append(run(cmd))
    base_wall = [w for w, _ in results["load both + loop"]]
    base_rss = statistics.median(r for _, r in results["load both + loop"])
    lines = [f"two checkpoints of {size / 2**20:,.0f} MiB each, {runs} run(s)",
             "| contender | median s | min–max s | peak RSS MiB (median) | time × loop | RSS × loop |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, values in results.items():
        walls = [w for w, _ in values]
        rss = statistics.median(r for _, r in values)
        ratio = statistics.median(w / bw for w, bw in zip(walls, base_wall, strict=True))
        lines.append(f"| {key} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | {rss:,.0f} | "
                     f"{ratio:.2f} | {rss / base_rss:.2f} |")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
