"""diff of a GPT-2-size model against its Q8_0 and Q4_K GGUF, dequantised (issue 25, part 4, second half).

Files, written in a child process into a temporary folder and deleted afterwards:
- gpt2.safetensors: GPT2Config()'s random weights (124M parameters, float32, lm_head tied and not stored);
- gpt2-Q8_0.gguf and gpt2-Q4_K.gguf: the same tensors under the same names, written by gguf-py's GGUFWriter,
  every 2-D weight quantized (Q8_0 by gguf-py's own quantizer; Q4_K by `quantize_q4_k` below, since gguf-py
  only dequantizes the K-quants: 8 sub-blocks of 32 a super-block, 6-bit scales and mins, in ggml's byte
  layout, checked by gguf-py's dequantize), biases and norms kept F32 as llama.cpp keeps them.

Contenders, each in its own process, interleaved run by run:
- modinspect: `modinspect diff gpt2.safetensors gpt2-<type>.gguf --json`: every quantized tensor dequantised a
  chunk of rows at a time and compared with its float as it is read;
- gguf-py: the safetensors file loaded whole (safetensors.numpy.load_file), `gguf.GGUFReader` and
  `gguf.quants.dequantize` of every tensor whole, then each tensor's relative error in numpy.
Both print the worst relative error, which must agree.

    python bench/bench_dequant.py            # GPT-2 small, 5 runs
    python bench/bench_dequant.py --smoke    # a 2-layer, 256-wide GPT-2, one run
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import (
    bench_parser,
    interleaved,
    make_in_child,
    modinspect_command,
    paired_ratio,
    spread,
    walls_and_rss,
)

GGUF_PY = """
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file
floats = load_file(sys.argv[1])
worst = 0.0
for t in GGUFReader(sys.argv[2]).tensors:
    w = floats[t.name].astype(np.float64).reshape(-1)
    q = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(-1)
    if t.tensor_type.name in ("F32", "F16"):
        continue
    worst = max(worst, float(np.linalg.norm(w - q) / np.linalg.norm(w)))
print(worst)
"""

TYPES = ("Q8_0", "Q4_K")


def quantize_q4_k(x: Any) -> Any:
    """float32 rows (a multiple of 256 wide) -> Q4_K blocks, uint8 [rows, width / 256 · 144]."""
    import numpy as np

    rows = x.shape[0]
    blocks = x.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(blocks.min(-1), 0.0)
    hi = blocks.max(-1)
    scale = (hi - lo) / 15
    mins = -lo
    d = scale.max(-1, keepdims=True) / 63
    dmin = mins.max(-1, keepdims=True) / 63
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    d, dmin = d16.astype(np.float32), dmin16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.rint(scale / d), 0).clip(0, 63).astype(np.uint8)
        mq = np.where(dmin > 0, np.rint(mins / dmin), 0).clip(0, 63).astype(np.uint8)
        step = (d * sc)[..., None]
        offset = (dmin * mq)[..., None]
        q = np.where(step > 0, np.rint((blocks + offset) / step), 0).clip(0, 15).astype(np.uint8)
    packed_scales = np.empty((blocks.shape[0], 12), dtype=np.uint8)
    packed_scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed_scales[:, 4:8] = (mq[:, :4] & 63) | ((mq[:, 4:] >> 4) << 6)
    packed_scales[:, 8:12] = (sc[:, 4:] & 15) | ((mq[:, 4:] & 15) << 4)
    q4 = q.reshape(-1, 4, 2, 32)
    qs = (q4[:, :, 0] | (q4[:, :, 1] << 4)).reshape(-1, 128)
    out = np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), packed_scales, qs], axis=1)
    return out.reshape(rows, -1)


def write_files(folder: Path, smoke: bool) -> None:
    """Run in a child: GPT-2's random weights as safetensors and as two GGUF files."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import quantize
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=256, n_head=4) if smoke else GPT2Config()
    state = {k: v.contiguous() for k, v in GPT2LMHeadModel(config).state_dict().items()}
    state.pop("lm_head.weight")  # tied to transformer.wte, as save_pretrained stores it
    save_file(state, str(folder / "gpt2.safetensors"))
    worst: dict[str, float] = {}
    for type_name in TYPES:
        qtype = gguf.GGMLQuantizationType[type_name]
        writer = gguf.GGUFWriter(str(folder / f"gpt2-{type_name}.gguf"), "gpt2")
        for name, tensor in state.items():
            values = tensor.numpy().astype(np.float32)
            if values.ndim != 2:
                writer.add_tensor(name, values)
                continue
            if type_name == "Q4_K":
                blocks = quantize_q4_k(values)
                error = np.asarray(gguf.quants.dequantize(blocks, qtype)).reshape(values.shape)
                worst[name] = float(np.linalg.norm(values - error) / np.linalg.norm(values))
            else:
                blocks = quantize(values, qtype)
            writer.add_tensor(name, blocks, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    params = sum(t.numel() for t in state.values())
    (folder / "meta.json").write_text(
        json.dumps({"params": params, "q4_k_worst": max(worst.values())})
    )


def worst_of(stdout: str, json_doc: bool) -> float:
    if json_doc:
        errors = [q["rel_error"] for q in json.loads(stdout)["quantization"]]
        return max(errors)
    return float(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, "a tiny GPT-2, one run", make=True).parse_args(argv)
    if args.make:
        write_files(Path(args.make), args.smoke)
        return []
    runs = args.runs or (1 if args.smoke else 5)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_in_child(__file__, folder, args.smoke)
        meta = json.loads((folder / "meta.json").read_text())
        full = folder / "gpt2.safetensors"
        contenders: dict[str, tuple[list[str], bool]] = {}
        for type_name in TYPES:
            q = folder / f"gpt2-{type_name}.gguf"
            contenders[f"modinspect diff ({type_name})"] = (
                [*modinspect_command(), "diff", str(full), str(q), "--json"],
                True,
            )
            contenders[f"gguf-py dequantize all ({type_name})"] = (
                [sys.executable, "-c", GGUF_PY, str(full), str(q)],
                False,
            )
        commands = {name: cmd for name, (cmd, _) in contenders.items()}
        results = interleaved(commands, runs, ok_codes=(0, 1), capture=True)
        walls, rss = walls_and_rss(results)
        worst = {
            name: worst_of(results[name][-1].stdout, is_json)
            for name, (_, is_json) in contenders.items()
        }
        sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix != ".json"}
    lines.append(
        f"Files: gpt2.safetensors {sizes['gpt2.safetensors'] / 2**20:.0f} MiB ({meta['params']:,} parameters, "
        f"float32), gpt2-Q8_0.gguf {sizes['gpt2-Q8_0.gguf'] / 2**20:.0f} MiB, gpt2-Q4_K.gguf "
        f"{sizes['gpt2-Q4_K.gguf'] / 2**20:.0f} MiB; {runs} runs."
    )
    lines.append("")
    lines.append("| contender | wall s (median) | range | peak RSS MiB | worst rel. error |")
    lines.append("| --- | --- | --- | --- | --- |")
    for name in contenders:
        lines.append(
            f"| {name} | {statistics.median(walls[name]):.2f} | {spread(walls[name])} | "
            f"{statistics.median(rss[name]):.0f} | {worst[name]:.4g} |"
        )
    lines.append("")
    for type_name in TYPES:
        ours, theirs = f"modinspect diff ({type_name})", f"gguf-py dequantize all ({type_name})"
        ratio = paired_ratio(walls[ours], walls[theirs])
        memory = statistics.median(rss[ours]) / statistics.median(rss[theirs])
        agree = abs(worst[ours] - worst[theirs]) <= 1e-4 * max(worst[theirs], 1e-12)
        lines.append(
            f"{type_name}: modinspect over gguf-py (median of paired per-run ratios): time x{ratio:.2f}, "
            f"peak RSS x{memory:.2f}; worst relative errors agree: {'yes' if agree else 'no'}"
        )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
