"""tree: `modinspect tree --json` against torch.load(mmap=True), safetensors' safe_open and torchinfo, wall time and peak RSS.

Files, built in a child process: GPT-2 small (124,439,808 parameters, random weights) as a safetensors file
(stored as `save_pretrained` stores it: the tied `lm_head.weight` dropped) and as a zip `.pth` of its state
dict; and a ~20 GB SPARSE safetensors file: GPT-2's header with every width scaled from 768 to 5760 (the same
148 tensors), a valid file whose data is one hole, so it takes no disk space. It is deleted afterwards.

Each contender runs in its own process (peak RSS from wait4), interleaved run by run:
- modinspect: `modinspect tree FILE --json`, on every file;
- torch.load: `torch.load(FILE, mmap=True, weights_only=True)` and the sum of numel, on the .pth
  (torch.load does not read safetensors);
- safe_open: safetensors' own lazy reader and the product of each shape, on the safetensors files;
- torchinfo: `summary()` of transformers' GPT2LMHeadModel built from its config, on 4x128 tokens
  (skipped with a note when torchinfo is not installed: pip install '.[bench]').
"params" is each contender's total, checked against the truth (tied weights counted once).

    python bench/bench_tree.py            # GPT-2 small, 20 GB sparse file, 5 runs
    python bench/bench_tree.py --smoke    # a tiny GPT-2 and a ~100 MB sparse file, one run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import scale_files
from bench_common import (
    ProcessRun,
    bench_parser,
    interleaved,
    make_in_child,
    modinspect_command,
    paired_ratio,
    spread,
)

TORCH_LOAD = """
import sys, torch
state = torch.load(sys.argv[1], mmap=True, weights_only=True)
print(sum(t.numel() for t in state.values()))
"""

SAFE_OPEN = """
import math, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    print(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
"""

# Every width of GPT-2 small (768, and the 3x/4x projections) scaled to this for the sparse file: 20.3 GB of fp32.
SPARSE_WIDTH = 5760
SMOKE_SPARSE_WIDTH = 1024


def gpt2_config(smoke: bool):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512) if smoke else GPT2Config()


def make_files(folder: Path, smoke: bool) -> None:
    """gpt2.safetensors, gpt2.pth, big.safetensors (sparse) and truth.json with the true parameter counts."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(smoke))
    state = model.state_dict()
    torch.save(state, folder / "gpt2.pth")
    save_file(
        {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"},
        str(folder / "gpt2.safetensors"),
        metadata={"format": "pt"},
    )
    true_params = sum(p.numel() for p in model.parameters())  # each tied parameter once
    sparse_params = write_sparse(
        folder / "gpt2.safetensors",
        folder / "big.safetensors",
        SMOKE_SPARSE_WIDTH if smoke else SPARSE_WIDTH,
    )
    (folder / "truth.json").write_text(
        json.dumps(
            {
                "gpt2": true_params,
                "big": sparse_params,
                "tensors": len(state) - 1,
                "tied": state["lm_head.weight"].numel(),
            }
        )
    )


def write_sparse(small: Path, big: Path, width: int) -> int:
    """Write `small`'s header with its model width scaled to `width`, then extend the file over a hole.

    Returns the parameter count the new header describes.
    """
    with small.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)  # {"format": "pt"}, which write_header_file writes too
    d = header["transformer.wte.weight"]["shape"][1]
    scale = {d: width, 3 * d: 3 * width, 4 * d: 4 * width}
    specs: list[scale_files.Spec] = [
        (name, spec["dtype"], [scale.get(x, x) for x in spec["shape"]])
        for name, spec in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    ]
    scale_files.write_header_file(big, specs)
    return sum(math.prod(shape) for _, _, shape in specs)


def torchinfo_child(smoke: bool) -> None:
    """What a torchinfo user runs: build the model from its code, then summary() on an input."""
    import time

    import torch
    from torchinfo import summary
    from transformers import GPT2LMHeadModel

    config = gpt2_config(smoke)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 16) if smoke else (4, 128))
    start = time.perf_counter()
    stats = summary(model, input_data=ids, verbose=0)
    print(json.dumps({"params": stats.total_params, "summary_s": time.perf_counter() - start}))


def on_disk(path: Path) -> int:
    """Bytes allocated on disk (what du counts), not the apparent size."""
    return path.stat().st_blocks * 512


def human(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} B"


MODEL = "GPT-2 built from its code"
MODINSPECT = "modinspect tree --json"


def prepare(folder: Path, smoke: bool) -> tuple[dict[str, tuple[Path, int]], dict[str, int]]:
    """The files, as {row label: (path, true parameter count)}, and truth.json."""
    make_in_child(__file__, folder, smoke, quiet=True)
    truth = json.loads((folder / "truth.json").read_text())
    small, pth, big = folder / "gpt2.safetensors", folder / "gpt2.pth", folder / "big.safetensors"
    allocated = on_disk(big)
    if allocated > 2**20:
        raise RuntimeError(
            f"{big} takes {allocated:,} bytes on disk: this filesystem does not keep holes"
        )
    return {
        f"GPT-2 safetensors, {human(small.stat().st_size)}": (small, truth["gpt2"]),
        f"GPT-2 zip .pth, {human(pth.stat().st_size)}": (pth, truth["gpt2"]),
        f"sparse safetensors, {human(big.stat().st_size)} ({allocated // 1024} KiB on disk)": (
            big,
            truth["big"],
        ),
    }, truth


def commands(files: dict[str, tuple[Path, int]], smoke: bool) -> dict[tuple[str, str], list[str]]:
    """(row label, contender) -> command; modinspect first on each file, the base of that file's ratios."""
    mi = modinspect_command()
    out: dict[tuple[str, str], list[str]] = {}
    for label, (path, _) in files.items():
        out[label, MODINSPECT] = [*mi, "tree", str(path), "--json"]
        if path.suffix == ".pth":
            out[label, "torch.load(mmap=True) + Σ numel"] = [
                sys.executable,
                "-c",
                TORCH_LOAD,
                str(path),
            ]
        else:
            out[label, "safe_open + Σ shapes"] = [sys.executable, "-c", SAFE_OPEN, str(path)]
    if importlib.util.find_spec("torchinfo") is not None:
        out[MODEL, "torchinfo summary()"] = [
            sys.executable,
            __file__,
            "--torchinfo",
            *(["--smoke"] if smoke else []),
        ]
    return out


def table(
    results: dict[tuple[str, str], list[ProcessRun]],
    files: dict[str, tuple[Path, int]],
    truth: dict[str, int],
    runs: int,
) -> list[str]:
    truths = {label: count for label, (_, count) in files.items()} | {MODEL: truth["gpt2"]}
    small_label, _, big_label = files
    lines = [
        f"{runs} run(s); true parameter counts (tied weights once): GPT-2 {truth['gpt2']:,}, sparse file {truth['big']:,}",
        "| file | contender | median s | min–max s | peak RSS MiB median | min–max MiB | params reported | "
        "right? | time × modinspect |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary_times: list[float] = []
    for (label, name), values in results.items():
        walls = [r.wall for r in values]
        rss = [r.rss_mib for r in values]
        base = [r.wall for r in results[small_label if label == MODEL else label, MODINSPECT]]
        answer = reported(name, values[-1].stdout)
        if label == MODEL:
            summary_times = [json.loads(r.stdout)["summary_s"] for r in values]
        right = "yes" if answer == truths[label] else f"**no**: true {truths[label]:,}"
        lines.append(
            f"| {label} | {name} | {statistics.median(walls):.2f} | {spread(walls)} | "
            f"{statistics.median(rss):,.0f} | {spread(rss, 0)} | {answer:,} | {right} | "
            f"{paired_ratio(walls, base):.2f} |"
        )
    small_runs, big_runs = results[small_label, MODINSPECT], results[big_label, MODINSPECT]
    growth = files[big_label][0].stat().st_size / files[small_label][0].stat().st_size
    lines += [
        "",
        f"modinspect on the {growth:,.0f}× larger sparse file: time × "
        f"{paired_ratio([r.wall for r in big_runs], [r.wall for r in small_runs]):.2f}, peak RSS × "
        f"{paired_ratio([r.rss_mib for r in big_runs], [r.rss_mib for r in small_runs]):.2f} "
        f"(paired medians; both headers list the same {truth['tensors']} tensors)",
        "params reported: modinspect's `totals.params`; torch.load and safe_open, the sum a user would take over the "
        "tensors they return; torchinfo, `total_params`. GPT-2 ties `lm_head.weight` to `transformer.wte.weight`: "
        f"counting both names, as torchinfo and the sum after torch.load do, counts {truth['tied']:,} parameters twice.",
    ]
    if summary_times:
        lines.append(
            f"torchinfo's summary() call alone, after the model is built: median {statistics.median(summary_times):.2f} s"
        )
    else:
        lines.append("torchinfo rows skipped: torchinfo is not installed (pip install '.[bench]')")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = bench_parser(__doc__, "tiny files, one run", runs=5, make=True)
    parser.add_argument("--torchinfo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make:
        make_files(Path(args.make), args.smoke)
        return []
    if args.torchinfo:
        torchinfo_child(args.smoke)
        return []
    runs = 1 if args.smoke else args.runs
    with tempfile.TemporaryDirectory() as tmp:  # the sparse file goes with it
        files, truth = prepare(Path(tmp), args.smoke)
        # page cache and imports warm, unrecorded
        results = interleaved(commands(files, args.smoke), runs, warm=not args.smoke, capture=True)
        lines = table(results, files, truth, runs)
    print("\n".join(lines))
    return lines


def reported(contender: str, stdout: str) -> int:
    """The parameter total a contender printed."""
    if contender.startswith("modinspect"):
        return int(json.loads(stdout)["totals"]["params"])
    if contender.startswith("torchinfo"):
        return int(json.loads(stdout)["params"])
    return int(stdout.split()[-1])


if __name__ == "__main__":
    main()
