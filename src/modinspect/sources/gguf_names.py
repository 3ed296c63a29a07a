"""llama.cpp's GGUF tensor names as the Hugging Face checkpoint they were converted from names them.

A pure table, no gguf import: `hf_name("blk.3.attn_q.weight", "llama", 32)` is
`model.layers.3.self_attn.q_proj.weight`. It is the inverse of gguf-py's `TensorNameMap` (what llama.cpp's
convert_hf_to_gguf.py uses) for the tensors each architecture's converter writes, checked against it in
tests/test_gguf_names.py.

Mixtral GGUF files say `general.architecture = llama`: llama.cpp merges each layer's experts into one
tensor per projection (`blk.N.ffn_gate_exps`, [experts, rows, cols]), as transformers' Mixtral does on load,
so `llama` maps those to the checkpoint's `block_sparse_moe.experts.w1/w2/w3` with the expert index dropped
(gguf-py's names for them). transformers 5 goes one step further and stacks w1 and w3 into one
`mlp.experts.gate_up_proj` (w2 is its `mlp.experts.down_proj`), which no single GGUF tensor is.

Only names are mapped. Values may still differ from the source: llama.cpp's converter permutes the rows of
llama's q and k projections (rotary layout), adds 1 to Gemma's norm weights, and GPT-2's Conv1D weights are
stored transposed.
"""

from __future__ import annotations

import dataclasses
import re

from modinspect.errors import UsageError
from modinspect.sources.base import Source, WrappedSource
from modinspect.sources.gguf import GGUFSource

__all__ = ["ARCHITECTURES", "HFNamedSource", "hf_name", "hf_names", "with_hf_names"]

_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_MOE_BLOCK = {
    "ffn_gate_inp": "block_sparse_moe.gate",  # the router
    "ffn_gate_exps": "block_sparse_moe.experts.w1",
    "ffn_down_exps": "block_sparse_moe.experts.w2",
    "ffn_up_exps": "block_sparse_moe.experts.w3",
}

# arch -> (top-level names, the block prefix, names inside a block)
_TABLES: dict[str, tuple[dict[str, str], str, dict[str, str]]] = {
    "llama": (_LLAMA_TOP, "model.layers", {**_LLAMA_BLOCK, **_MOE_BLOCK}),
    "mixtral": (_LLAMA_TOP, "model.layers", {**_LLAMA_BLOCK, **_MOE_BLOCK}),
    "qwen2": (_LLAMA_TOP, "model.layers", _LLAMA_BLOCK),
    # Gemma ties its output to the embedding: its GGUF has no `output`.
    "gemma": ({k: v for k, v in _LLAMA_TOP.items() if k != "output"}, "model.layers", _LLAMA_BLOCK),
    "phi3": (
        _LLAMA_TOP,
        "model.layers",
        {
            "attn_norm": "input_layernorm",
            "attn_qkv": "self_attn.qkv_proj",
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_norm": "post_attention_layernorm",
            "ffn_up": "mlp.gate_up_proj",  # Phi-3 keeps gate and up as one matrix
            "ffn_down": "mlp.down_proj",
        },
    ),
    "gpt2": (
        {
            "token_embd": "transformer.wte",
            "position_embd": "transformer.wpe",
            "output_norm": "transformer.ln_f",
            "output": "lm_head",
        },
        "transformer.h",
        {
            "attn_norm": "ln_1",
            "attn_qkv": "attn.c_attn",
            "attn_output": "attn.c_proj",
            "ffn_norm": "ln_2",
            "ffn_up": "mlp.c_fc",
            "ffn_down": "mlp.c_proj",
        },
    ),
}
ARCHITECTURES: tuple[str, ...] = tuple(sorted(_TABLES))

_NAME = re.compile(r"(?:blk\.(\d{1,9})\.)?([a-z0-9_]+)\.(weight|bias)")


def hf_name(gguf_name: str, arch: str, n_blocks: int) -> str | None:
    """The Hugging Face name of GGUF tensor `gguf_name` in an `arch` model of `n_blocks` blocks, or None.

    None for an architecture not in ARCHITECTURES, a name the table does not know, or a block index
    outside the model.
    """
    table = _TABLES.get(arch)
    match = _NAME.fullmatch(gguf_name)
    if table is None or match is None:
        return None
    block, base, suffix = match.groups()
    top, prefix, inner = table
    if block is None:
        mapped = top.get(base)
        return None if mapped is None else f"{mapped}.{suffix}"
    index = int(block)
    mapped = inner.get(base)
    if mapped is None or index >= n_blocks or block != str(index):
        return None
    return f"{prefix}.{index}.{mapped}.{suffix}"


def hf_names(gguf_names: list[str], arch: str, n_blocks: int) -> dict[str, str]:
    """{GGUF name: HF name} for the names hf_name maps; a name it does not map keeps its own name, and so
    does a name whose HF name another tensor (or an unmapped name) already has."""
    out: dict[str, str] = {}
    taken = set(gguf_names)
    for name in gguf_names:
        new = hf_name(name, arch, n_blocks)
        if new is not None and new != name and new not in taken:
            out[name] = new
            taken.add(new)
    return out


class HFNamedSource(WrappedSource[GGUFSource]):
    """A GGUF source seen under Hugging Face names: its tensors renamed, its reads mapped back."""

    def __init__(self, inner: GGUFSource, renames: dict[str, str]) -> None:
        self._back = {new: old for old, new in renames.items()}
        tensors = [
            dataclasses.replace(t, name=renames[t.name]) if t.name in renames else t
            for t in inner.tensors
        ]
        super().__init__(inner, tensors)

    def stored_name(self, name: str) -> str:
        return self._back.get(name, name)

    def ggml_type(self, name: str) -> str:
        """The ggml type the file stores tensor `name` (a Hugging Face name) in."""
        return self.inner.ggml_type(self.stored_name(name))


def _block_count(src: Source, arch: str) -> int:
    declared = src.metadata.get(f"{arch}.block_count", "")
    if declared.isdigit():
        return int(declared)
    indices = [int(m.group(1)) for t in src.tensors if (m := re.match(r"blk\.(\d{1,9})\.", t.name))]
    return max(indices, default=-1) + 1


def with_hf_names(src: Source) -> HFNamedSource:
    """`src` (a GGUF source) under Hugging Face names, from its `general.architecture`; a UsageError for a
    source that is not GGUF or an architecture without a table."""
    if not isinstance(src, GGUFSource):
        raise UsageError(
            f"--hf-names applies to GGUF files; {src.label} is {src.format} (its names are its own)"
        )
    arch = src.metadata.get("general.architecture")
    if arch not in _TABLES:
        said = "no general.architecture" if arch is None else f"the architecture {arch[:60]!r}"
        raise UsageError(
            f"--hf-names: {src.label} has {said}; Hugging Face names are known for "
            f"{', '.join(ARCHITECTURES)}"
        )
    renames = hf_names(src.names(), arch, _block_count(src, arch))
    return HFNamedSource(src, renames)
