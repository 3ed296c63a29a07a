"""scale: `tree`, `tree --json`, `diff` and `load` of 100k–200k-tensor checkpoints against parsing their headers.

Files, written by bench/scale_files.py in a child process (no torch): 100k-tensor safetensors headers with flat
names (`tensor_000000`…) and layered ones (a DeepSeek-V3-like mixture of experts: 256 experts a layer), the layered
names in a 163-shard index (DeepSeek-V3 ships ~91k tensors in 163 shards), all over data holes; and two 200k-tensor
files with real data, the second with every 100th tensor changed, plus an entry point that builds the matching model.

Each contender runs in its own process (peak RSS from wait4), interleaved run by run; each ratio is the median of
per-run ratios to the same file's base, which runs right before it:
- header parse (the base): `python -c` reading the header(s) and `json.loads` each (a shard index: the index and
  every shard's header), plus for the diff pair reading both files' data;
- `modinspect tree FILE --json` and `modinspect tree FILE` (rendered, as when piped);
- `modinspect diff a b --json` and `modinspect load entry.py:build b --meta --json` (the load plan, whose base
  also builds the model on the meta device).

    python bench/bench_scale.py            # 100k / 200k tensors, 5 runs
    python bench/bench_scale.py --smoke    # 2,000 / 4,000 tensors, 10 shards, one run
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench_common import (
    bench_parser,
    interleaved,
    make_in_child,
    modinspect_command,
    paired_ratio,
    spread,
)

PARSE = """
import json, struct, sys
from pathlib import Path
paths = [Path(p) for p in sys.argv[1:]]
if paths[0].suffix == ".json":
    index = json.loads(paths[0].read_text())
    paths = [paths[0].parent / s for s in dict.fromkeys(index["weight_map"].values())]
count = 0
for path in paths:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        count += len(json.loads(f.read(n))) - 1
print(count)
"""

PARSE_AND_READ = (
    PARSE
    + """
for path in paths:
    with path.open("rb") as f:
        while f.read(1 << 20):
            pass
"""
)

PARSE_AND_BUILD = (
    PARSE
    + """
sys.path.insert(0, str(paths[0].parent))
import torch
with torch.device("meta"):
    __import__("entry").build()
"""
)

ENTRY = '''"""The model whose state dict the 200k-tensor pair holds: blocks of eight 4-element parameters."""
import torch
from torch import nn

N = {n}


class Block(nn.Module):
    def __init__(self, k):
        super().__init__()
        for j in range(k):
            self.register_parameter(f"w{{j}}", nn.Parameter(torch.empty(4)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block(min(8, N - 8 * i)) for i in range(-(-N // 8)))


def build():
    return Model()
'''

HEADER = "header parse"


def make(folder: Path, smoke: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale_files

    n, pair, shards = (2000, 4000, 10) if smoke else (100_000, 200_000, 163)
    scale_files.write_header_file(folder / "flat.safetensors", scale_files.flat_specs(n))
    layered = scale_files.layered_specs(n, experts=16 if smoke else 256)
    scale_files.write_header_file(folder / "layered.safetensors", layered)
    scale_files.write_sharded(folder / "sharded", layered, shards)
    scale_files.write_pair(folder / "a.safetensors", folder / "b.safetensors", pair)
    (folder / "entry.py").write_text(ENTRY.format(n=pair))


def contenders(folder: Path, smoke: bool) -> dict[tuple[str, str], list[str]]:
    """(case, contender) -> command; each case's base first."""
    mi, py = modinspect_command(), sys.executable
    n, pair, shards = (2000, 4000, 10) if smoke else (100_000, 200_000, 163)
    index = folder / "sharded" / "model.safetensors.index.json"
    out: dict[tuple[str, str], list[str]] = {}
    for case, path in (
        (f"{n:,} tensors, flat names", folder / "flat.safetensors"),
        (f"{n:,} tensors, layered names", folder / "layered.safetensors"),
        (f"{n:,} tensors, {shards}-shard index", index),
    ):
        out[case, HEADER] = [py, "-c", PARSE, str(path)]
        out[case, "modinspect tree --json"] = [*mi, "tree", str(path), "--json"]
        out[case, "modinspect tree"] = [*mi, "tree", str(path)]
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    diff_case, load_case = f"diff of two {pair:,}-tensor files", f"load plan, {pair:,} tensors"
    out[diff_case, HEADER + " + reading the data"] = [py, "-c", PARSE_AND_READ, str(a), str(b)]
    out[diff_case, "modinspect diff --json"] = [*mi, "diff", str(a), str(b), "--json"]
    out[load_case, HEADER + " + building the model on meta"] = [py, "-c", PARSE_AND_BUILD, str(b)]
    out[load_case, "modinspect load --meta --json"] = [
        *mi,
        "load",
        f"{folder / 'entry.py'}:build",
        str(b),
        "--meta",
        "--json",
    ]
    return out


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, "small files, one run", runs=5, make=True).parse_args(argv)
    if args.make:
        make(Path(args.make), args.smoke)
        return []
    runs = 1 if args.smoke else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        make_in_child(__file__, tmp, args.smoke)
        commands = contenders(Path(tmp), args.smoke)
        # page cache and imports warm, unrecorded
        results = interleaved(commands, runs, warm=not args.smoke, ok_codes=(0, 1))
    lines = [
        f"{runs} run(s); the base of each case is the first row (×1.00); data holes except for the diff pair",
        "| case | contender | median s | min–max s | peak RSS MiB median | min–max MiB | time × base |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    bases = {
        case: results[key]
        for key in results
        for case in [key[0]]
        if key == next(k for k in results if k[0] == case)
    }
    for (case, name), values in results.items():
        walls, rss = [r.wall for r in values], [r.rss_mib for r in values]
        ratio = paired_ratio(walls, [r.wall for r in bases[case]])
        lines.append(
            f"| {case} | {name} | {statistics.median(walls):.3f} | {spread(walls, 3)} | "
            f"{statistics.median(rss):,.0f} | {spread(rss, 0)} | {ratio:.2f} |"
        )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
