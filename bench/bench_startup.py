"""start-up: `modinspect --help` and `modinspect tree x.safetensors` against `python -c "import torch"`.

Each command runs in its own process (wall time, peak RSS from wait4), interleaved run by run; ratios are
the median of per-run ratios to `import torch`. `python -c pass` is the interpreter's own floor.
x.safetensors is sample_models/tiny_lm.safetensors; the tree is rendered (plain, as when piped).

    python bench/bench_startup.py            # 10 runs
    python bench/bench_startup.py --smoke    # one run
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from bench_common import (
    bench_parser,
    interleaved,
    modinspect_command,
    paired_ratio,
    spread,
    walls_and_rss,
)

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "tiny_lm.safetensors"
BASE = 'python -c "import torch"'


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, "one run", runs=10).parse_args(argv)
    runs = 1 if args.smoke else args.runs
    mi = modinspect_command()
    contenders = {
        "python -c pass": [sys.executable, "-c", "pass"],
        BASE: [sys.executable, "-c", "import torch"],
        "modinspect --help": [*mi, "--help"],
        "modinspect tree x.safetensors": [*mi, "tree", str(SAMPLE)],
    }
    # the page cache warmed once, unrecorded
    walls, rss = walls_and_rss(interleaved(contenders, runs, warm=not args.smoke))
    lines = [
        f"{runs} run(s); x.safetensors = {SAMPLE.relative_to(SAMPLE.parent.parent)}",
        "| command | median s | min–max s | peak RSS MiB median | min–max MiB | time × import torch | RSS × import torch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in contenders:
        lines.append(
            f"| {key} | {statistics.median(walls[key]):.3f} | {spread(walls[key], 3)} | "
            f"{statistics.median(rss[key]):,.0f} | {spread(rss[key], 0)} | "
            f"{paired_ratio(walls[key], walls[BASE]):.2f} | {paired_ratio(rss[key], rss[BASE]):.2f} |"
        )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
