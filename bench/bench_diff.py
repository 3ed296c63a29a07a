"""diff: `modinspect diff` against loading both files and looping in Python, `cmp` and `cat`, wall time and peak RSS.

Two GPT-2-size (124M parameter) safetensors files a and b, b with every 10th tensor + 1e-3, and a2, a byte copy of a.
Each contender runs in its own process (peak RSS from wait4), interleaved run by run:
- modinspect: `python -m modinspect diff a.safetensors b.safetensors --json` (changed), and `... a a2` (identical);
- load-and-loop: `safetensors.torch.load_file` both files, then max/mean |a-b| per tensor in torch;
- `cmp a a2` (the floor for identical files) and `cat a b > /dev/null` (reading both files once).

    python bench/bench_diff.py            # two GPT-2-size (124M parameter) checkpoints
    python bench/bench_diff.py --smoke    # tiny checkpoints, one run
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_common import (
    bench_parser,
    interleaved,
    make_in_child,
    paired_ratio,
    spread,
    walls_and_rss,
)

MODINSPECT = "modinspect diff"
LOOP_NAME = "load both + loop"
CAT = "cat a b > /dev/null"
IDENTICAL = "modinspect diff, identical files"
CMP = "cmp a a2"

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


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, runs=5, make=True).parse_args(argv)
    if args.make:
        make_checkpoints(Path(args.make), args.smoke)
        return []
    runs = 1 if args.smoke else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        make_in_child(__file__, tmp, args.smoke, quiet=True)
        a, b, a2 = (
            Path(tmp) / "a.safetensors",
            Path(tmp) / "b.safetensors",
            Path(tmp) / "a2.safetensors",
        )
        shutil.copyfile(a, a2)
        size = a.stat().st_size
        mi = [sys.executable, "-m", "modinspect", "diff"]
        contenders = {
            MODINSPECT: [*mi, str(a), str(b), "--json"],
            LOOP_NAME: [sys.executable, "-c", LOOP, str(a), str(b)],
            CAT: ["sh", "-c", 'cat "$0" "$1" > /dev/null', str(a), str(b)],
            IDENTICAL: [*mi, str(a), str(a2), "--json"],
            CMP: ["cmp", str(a), str(a2)],
        }
        # page cache warm, unrecorded; exit 1 (the files differ) is a success
        results = interleaved(contenders, runs, warm=not args.smoke, ok_codes=(0, 1))
    walls, all_rss = walls_and_rss(results)
    base_rss = statistics.median(all_rss[LOOP_NAME])
    lines = [
        f"two checkpoints of {size / 2**20:,.0f} MiB each (b: every 10th tensor changed; a2: a byte copy of a), "
        f"{runs} run(s)",
        "| contender | median s | min–max s | peak RSS MiB (median) | time × loop | RSS × loop | time × cat | "
        "time × cmp |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in results:
        rss = statistics.median(all_rss[key])
        lines.append(
            f"| {key} | {statistics.median(walls[key]):.2f} | {spread(walls[key])} | "
            f"{rss:,.0f} | {paired_ratio(walls[key], walls[LOOP_NAME]):.2f} | {rss / base_rss:.2f} | "
            f"{paired_ratio(walls[key], walls[CAT]):.2f} | {paired_ratio(walls[key], walls[CMP]):.2f} |"
        )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
