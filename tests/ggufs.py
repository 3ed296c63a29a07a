"""GGUF files written by gguf-py's GGUFWriter (the llama.cpp project's own Python writer), for the tests.

Quantized tensors come from `gguf.quants.quantize` where gguf-py implements the quantizer (Q4_0, Q5_0,
Q8_0, BF16, ...); for the types it only dequantizes (the K-quants, the IQ types) the writer is given
bytes of the type's exact block layout (`quant_shape_to_byte_shape`), as it accepts them with `raw_dtype`.
Either way the file, its header, alignment and padding are the writer's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quant_shape_to_byte_shape, quantize

PLAIN = {
    T.F32: np.float32,
    T.F16: np.float16,
    T.F64: np.float64,
    T.I8: np.int8,
    T.I16: np.int16,
    T.I32: np.int32,
    T.I64: np.int64,
}


def tensor_data(shape: tuple[int, ...], qtype: T, seed: int = 0) -> np.ndarray:
    """What GGUFWriter.add_tensor takes for a tensor of logical `shape` (PyTorch order) stored as `qtype`."""
    rng = np.random.default_rng(seed)
    if qtype in PLAIN:
        if np.issubdtype(PLAIN[qtype], np.integer):
            return rng.integers(-100, 100, shape).astype(PLAIN[qtype])
        return rng.standard_normal(shape).astype(PLAIN[qtype])
    try:  # gguf-py quantizes Q4_0, Q5_0, Q8_0, BF16, ... itself; the K-quants and IQ types it only dequantizes
        return quantize(rng.standard_normal(shape).astype(np.float32), qtype)
    except NotImplementedError:
        pass
    return rng.integers(0, 256, quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)


def write(
    path: Path,
    tensors: Sequence[tuple[str, tuple[int, ...], T]],
    arch: str = "llama",
    kv: Callable[[gguf.GGUFWriter], None] | None = None,
    seed: int = 0,
    edit: Callable[[str, np.ndarray], np.ndarray] | None = None,
    **options: Any,
) -> Path:
    """A GGUF file of `tensors` (name, logical shape, type), metadata from `kv(writer)`; `edit(name, data)`
    may change what the writer is given (a quantized tensor's data is its blocks' bytes, a row per row)."""
    writer = gguf.GGUFWriter(str(path), arch, **options)
    if kv is not None:
        kv(writer)
    for i, (name, shape, qtype) in enumerate(tensors):
        data = tensor_data(shape, qtype, seed + i)
        if edit is not None:
            data = edit(name, data.copy())
        writer.add_tensor(name, data, raw_dtype=None if qtype in PLAIN else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


EMBD, FFN, KV_DIM, VOCAB = 256, 512, 128, 96


def llama_tensors(blocks: int = 2) -> list[tuple[str, tuple[int, ...], T]]:
    """llama.cpp's names for a small Llama, in the mixed types a Q4_K_M file has (and a few more)."""
    out: list[tuple[str, tuple[int, ...], T]] = [("token_embd.weight", (VOCAB, EMBD), T.Q8_0)]
    for i in range(blocks):
        out += [
            (f"blk.{i}.attn_norm.weight", (EMBD,), T.F32),
            (f"blk.{i}.attn_q.weight", (EMBD, EMBD), T.Q4_K),
            (f"blk.{i}.attn_k.weight", (KV_DIM, EMBD), T.Q4_K),
            (f"blk.{i}.attn_v.weight", (KV_DIM, EMBD), T.Q6_K),
            (f"blk.{i}.attn_output.weight", (EMBD, EMBD), T.Q4_0),
            (f"blk.{i}.ffn_norm.weight", (EMBD,), T.F32),
            (f"blk.{i}.ffn_gate.weight", (FFN, EMBD), T.Q4_K),
            (f"blk.{i}.ffn_up.weight", (FFN, EMBD), T.Q5_0),
            (f"blk.{i}.ffn_down.weight", (EMBD, FFN), T.Q6_K),
        ]
    out += [("output_norm.weight", (EMBD,), T.F32), ("output.weight", (VOCAB, EMBD), T.BF16)]
    return out


def llama_kv(blocks: int = 2, vocab: int = VOCAB) -> Callable[[gguf.GGUFWriter], None]:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_name("tiny-llama")
        w.add_array("general.tags", ["text-generation", "tiny"])
        w.add_context_length(2048)
        w.add_embedding_length(EMBD)
        w.add_block_count(blocks)
        w.add_feed_forward_length(FFN)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("llama")
        w.add_token_list([f"tok{i}" for i in range(vocab)])
        w.add_token_scores([float(-i) for i in range(vocab)])
        w.add_token_types([1] * vocab)
        w.add_bos_token_id(1)
        w.add_add_bos_token(True)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    return kv


def llama(path: Path, blocks: int = 2, vocab: int = VOCAB, **options: Any) -> Path:
    return write(path, llama_tensors(blocks), "llama", llama_kv(blocks, vocab), **options)


def llama_tensors_retyped(
    blocks: int, retype: dict[str, tuple[tuple[int, ...], T]]
) -> list[tuple[str, tuple[int, ...], T]]:
    """llama_tensors with some tensors given another shape or type."""
    return [(n, *retype.get(n, (s, q))) for n, s, q in llama_tensors(blocks)]
