"""Synthetic checkpoints at scale, written without torch: safetensors headers whose data is one hole.

- `flat`: N tensors named `tensor_000000`…, all at the top level (no module at all);
- `layered`: a DeepSeek-V3-like mixture of experts, `model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`
  and their `weight_scale_inv`, plus attention and norms per layer, cut at N tensors;
- `sharded`: the layered names spread over 163 shards with a `model.safetensors.index.json`, as
  DeepSeek-V3 ships its ~91k tensors;
- `pair`: two files of N small float32 tensors with real data, the second with every 100th tensor changed,
  for `diff` and `load` at scale.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

ST_BYTES = {"F32": 4, "BF16": 2, "F8_E4M3": 1}
Spec = tuple[str, str, list[int]]  # name, safetensors dtype, shape


def write_header_file(path: Path, specs: list[Spec], data: bytes | None = None) -> None:
    """A valid safetensors file; its tensor data is `data`, or a hole of the right size (no disk space)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * ST_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        if data is not None:
            assert len(data) == offset
            f.write(data)
        else:
            f.truncate(8 + len(raw) + offset)


def flat_specs(n: int) -> list[Spec]:
    return [(f"tensor_{i:06d}", "F32", [8, 8]) for i in range(n)]


def layered_specs(n: int, experts: int = 256) -> list[Spec]:
    specs: list[Spec] = []
    layer = 0
    while len(specs) < n:
        p = f"model.layers.{layer}"
        specs += [
            (f"{p}.input_layernorm.weight", "BF16", [64]),
            (f"{p}.post_attention_layernorm.weight", "BF16", [64]),
        ]
        for proj in ("q_a_proj", "kv_a_proj_with_mqa", "o_proj"):
            specs += [
                (f"{p}.self_attn.{proj}.weight", "F8_E4M3", [64, 64]),
                (f"{p}.self_attn.{proj}.weight_scale_inv", "F32", [1, 1]),
            ]
        for e in range(experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                specs += [
                    (f"{p}.mlp.experts.{e}.{proj}.weight", "F8_E4M3", [16, 64]),
                    (f"{p}.mlp.experts.{e}.{proj}.weight_scale_inv", "F32", [1, 1]),
                ]
        layer += 1
    return specs[:n]


def write_sharded(folder: Path, specs: list[Spec], shards: int = 163) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(specs) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        part = specs[k * per : (k + 1) * per]
        shard = f"model-{k + 1:05d}-of-{shards:06d}.safetensors"
        write_header_file(folder / shard, part)
        weight_map.update({name: shard for name, _, _ in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def write_pair(a: Path, b: Path, n: int, elems: int = 4, changed_every: int = 100) -> None:
    """Two files of `n` float32 tensors of `elems` values; b differs from a in every `changed_every`-th tensor."""
    specs: list[Spec] = [(f"blocks.{i // 8}.w{i % 8}", "F32", [elems]) for i in range(n)]
    rng = random.Random(0)
    data_a = bytearray(
        struct.pack(f"<{n * elems}f", *(rng.uniform(-1, 1) for _ in range(n * elems)))
    )
    data_b = bytearray(data_a)
    for i in range(0, n, changed_every):
        at = i * elems * 4
        (value,) = struct.unpack_from("<f", data_b, at)
        struct.pack_into("<f", data_b, at, value + 0.5)
    write_header_file(a, specs, bytes(data_a))
    write_header_file(b, specs, bytes(data_b))
