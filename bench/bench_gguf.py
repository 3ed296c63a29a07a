"""tree of a 7B-size GGUF: the header only, at what a safetensors header costs (issue 25, part 4).

Files, written in a child process into a temporary folder and deleted afterwards, both SPARSE (their data is
one hole, so they take no disk space):
- llama7b.gguf: Llama-2-7B's 291 tensor infos (32 blocks, 4096 wide, 11008 FFN, 32000 vocab) in the mixed
  types of a Q4_K_M file (Q4_K, with Q6_K for the output and every other block's ffn_down and attn_v, F32
  norms) and llama.cpp's metadata keys, written by gguf-py's own GGUFWriter (header, key/values and tensor
  infos; the data section is a hole of exactly the size the infos promise): about 3.9 GB;
- llama7b.safetensors: the same 291 tensors in BF16, under Hugging Face's names: about 13.5 GB.

Contenders, each in its own process, interleaved run by run:
- modinspect: `modinspect tree FILE --json` on each file;
- gguf-py: `gguf.GGUFReader(FILE)` and the sum of its tensors' element counts (it memory-maps the file and
  builds a numpy view per tensor), on the GGUF;
- safe_open: safetensors' own lazy reader and the product of each shape, on the safetensors file.
The goal: modinspect's tree of the GGUF within 1.25x of its tree of the safetensors file (median of paired
per-run ratios); "params" is checked against the true count, 6,738,415,616.

    python bench/bench_gguf.py            # 7B shapes, 5 runs
    python bench/bench_gguf.py --smoke    # a 2-block, 256-wide model, one run
"""

from __future__ import annotations

import json
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
    walls_and_rss,
)

GGUF_READER = """
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
print(sum(int(t.n_elements) for t in r.tensors))
"""

SAFE_OPEN = """
import math, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    print(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
"""

# Llama-2-7B and a tiny model of the same layout for --smoke.
FULL = {"blocks": 32, "embd": 4096, "ffn": 11008, "vocab": 32000}
SMOKE = {"blocks": 2, "embd": 256, "ffn": 768, "vocab": 512}
TRUE_7B = 6_738_415_616


def layout(size: dict[str, int]) -> list[tuple[str, tuple[int, ...], str]]:
    """(llama.cpp name, PyTorch-order shape, ggml type name) as a Q4_K_M file has them."""
    e, f, v = size["embd"], size["ffn"], size["vocab"]
    out = [("token_embd.weight", (v, e), "Q4_K")]
    for i in range(size["blocks"]):
        strong = (
            "Q6_K" if i % 2 == 0 else "Q4_K"
        )  # Q4_K_M gives every other block's attn_v/ffn_down Q6_K
        out += [
            (f"blk.{i}.attn_norm.weight", (e,), "F32"),
            (f"blk.{i}.attn_q.weight", (e, e), "Q4_K"),
            (f"blk.{i}.attn_k.weight", (e, e), "Q4_K"),
            (f"blk.{i}.attn_v.weight", (e, e), strong),
            (f"blk.{i}.attn_output.weight", (e, e), "Q4_K"),
            (f"blk.{i}.ffn_norm.weight", (e,), "F32"),
            (f"blk.{i}.ffn_gate.weight", (f, e), "Q4_K"),
            (f"blk.{i}.ffn_up.weight", (f, e), "Q4_K"),
            (f"blk.{i}.ffn_down.weight", (e, f), strong),
        ]
    out += [("output_norm.weight", (e,), "F32"), ("output.weight", (v, e), "Q6_K")]
    return out


def write_files(folder: Path, smoke: bool) -> None:
    """Run in a child: the sparse GGUF (gguf-py's writer, data section left a hole) and safetensors files."""
    import math

    import gguf
    import numpy as np
    from gguf.quants import quant_shape_to_byte_shape

    size = SMOKE if smoke else FULL
    tensors = layout(size)
    writer = gguf.GGUFWriter(str(folder / "llama7b.gguf"), "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(size["embd"])
    writer.add_block_count(size["blocks"])
    writer.add_feed_forward_length(size["ffn"])
    writer.add_head_count(32 if not smoke else 4)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}" for i in range(size["vocab"])])
    data_bytes = 0
    alignment = 32
    for name, shape, type_name in tensors:
        qtype = gguf.GGMLQuantizationType[type_name]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block * type_size
        if type_name == "F32":
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        else:  # a quantized tensor's info is given as its bytes' shape, as add_tensor(raw_dtype=) takes it
            byte_shape = quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        data_bytes += (nbytes + alignment - 1) // alignment * alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    path = folder / "llama7b.gguf"
    with path.open("r+b") as f:  # the header is padded to the alignment; the data is one hole
        f.truncate((path.stat().st_size + alignment - 1) // alignment * alignment + data_bytes)

    from modinspect.sources.gguf_names import hf_names

    renamed = hf_names([name for name, _, _ in tensors], "llama", size["blocks"])
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        nbytes = math.prod(shape) * 2
        header[renamed[name]] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    st = folder / "llama7b.safetensors"
    with st.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    truth = sum(math.prod(s) for _, s, _ in tensors)
    (folder / "truth.json").write_text(json.dumps({"params": truth}))


def params_of(stdout: str, json_doc: bool) -> int:
    if json_doc:
        return int(json.loads(stdout)["totals"]["params"])
    return int(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[str]:
    args = bench_parser(__doc__, "a tiny model, one run", make=True).parse_args(argv)
    if args.make:
        write_files(Path(args.make), args.smoke)
        return []
    runs = args.runs or (1 if args.smoke else 5)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_in_child(__file__, folder, args.smoke)
        truth = json.loads((folder / "truth.json").read_text())["params"]
        if not args.smoke and truth != TRUE_7B:
            raise SystemExit(f"the 7B layout has {truth:,} parameters, not {TRUE_7B:,}")
        gguf_file, st_file = folder / "llama7b.gguf", folder / "llama7b.safetensors"
        contenders = {
            "modinspect tree (GGUF)": (
                [*modinspect_command(), "tree", str(gguf_file), "--json"],
                True,
            ),
            "modinspect tree (safetensors)": (
                [*modinspect_command(), "tree", str(st_file), "--json"],
                True,
            ),
            "gguf.GGUFReader (GGUF)": ([sys.executable, "-c", GGUF_READER, str(gguf_file)], False),
            "safe_open (safetensors)": ([sys.executable, "-c", SAFE_OPEN, str(st_file)], False),
        }
        commands = {name: cmd for name, (cmd, _) in contenders.items()}
        results = interleaved(commands, runs, capture=True)
        walls, rss = walls_and_rss(results)
        counted = {
            name: params_of(results[name][-1].stdout, is_json)
            for name, (_, is_json) in contenders.items()
        }
        sizes = {
            "GGUF": gguf_file.stat().st_size,
            "safetensors": st_file.stat().st_size,
        }
    lines.append(
        f"Files: GGUF {sizes['GGUF'] / 1e9:.2f} GB (Q4_K_M types), safetensors "
        f"{sizes['safetensors'] / 1e9:.2f} GB (BF16), both sparse; {truth:,} parameters; {runs} runs."
    )
    lines.append("")
    lines.append("| contender | wall s (median) | range | peak RSS MiB | params | right |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name in contenders:
        ok = "yes" if counted[name] == truth else f"no ({counted[name]:,})"
        lines.append(
            f"| {name} | {statistics.median(walls[name]):.3f} | {spread(walls[name], 3)} | "
            f"{statistics.median(rss[name]):.0f} | {counted[name]:,} | {ok} |"
        )
    ratio = paired_ratio(walls["modinspect tree (GGUF)"], walls["modinspect tree (safetensors)"])
    lines.append("")
    lines.append(
        f"tree of the GGUF over tree of the safetensors file (median of paired per-run ratios): "
        f"x{ratio:.2f} (goal <= 1.25: {'met' if ratio <= 1.25 else 'missed'})"
    )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
