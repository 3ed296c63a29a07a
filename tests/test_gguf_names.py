"""sources/gguf_names.py against gguf-py's own TensorNameMap (what llama.cpp's convert_hf_to_gguf.py uses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import pytest

import ggufs
from conftest import invoke
from modinspect.sources.gguf_names import ARCHITECTURES, hf_name, hf_names

BLOCKS = 3
# Mixtral converts to general.architecture = llama: gguf-py has no MIXTRAL arch.
GGUF_ARCH = {"mixtral": "llama"}
CORE = {
    "llama": ["token_embd", "output", "output_norm", "blk.{}.attn_q", "blk.{}.ffn_gate"],
    "mixtral": [
        "blk.{}.ffn_gate_exps",
        "blk.{}.ffn_up_exps",
        "blk.{}.ffn_down_exps",
        "blk.{}.ffn_gate_inp",
    ],
    "qwen2": ["token_embd", "output", "blk.{}.attn_k", "blk.{}.attn_v", "blk.{}.ffn_down"],
    "gemma": [
        "token_embd",
        "output_norm",
        "blk.{}.attn_norm",
        "blk.{}.ffn_norm",
        "blk.{}.attn_output",
    ],
    "phi3": ["blk.{}.attn_qkv", "blk.{}.ffn_up", "blk.{}.ffn_down", "output"],
    "gpt2": ["token_embd", "position_embd", "blk.{}.attn_qkv", "blk.{}.ffn_up", "output_norm"],
}


def _arch(name: str) -> gguf.MODEL_ARCH:
    wanted = GGUF_ARCH.get(name, name)
    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == wanted)


def _gguf_names(arch: gguf.MODEL_ARCH) -> list[str]:
    """Every tensor name llama.cpp defines for `arch`, per block, with .weight and .bias."""
    out = []
    for tensor in gguf.MODEL_TENSORS[arch]:
        fmt = gguf.TENSOR_NAMES[tensor]
        bases = [fmt.format(bid=b) for b in range(BLOCKS)] if "{bid}" in fmt else [fmt]
        out += [f"{base}.{suffix}" for base in bases for suffix in ("weight", "bias")]
    return out


def test_the_architectures_asked_for_are_supported() -> None:
    assert set(ARCHITECTURES) >= {"llama", "qwen2", "gemma", "phi3", "gpt2", "mixtral"}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_round_trip_through_gguf_py(name: str) -> None:
    """For every GGUF name the table maps, gguf-py maps the HF name back to that GGUF name."""
    arch = _arch(name)
    tmap = gguf.get_tensor_name_map(arch, BLOCKS)
    mapped = 0
    for gname in _gguf_names(arch):
        hf = hf_name(gname, name, BLOCKS)
        if hf is None:
            continue
        back = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert back == gname, (name, gname, hf, back)
        mapped += 1
    for base in CORE[name]:  # the table knows the tensors a converted checkpoint has
        for b in range(BLOCKS):
            for suffix in ("weight", "bias"):
                assert hf_name(f"{base.format(b)}.{suffix}", name, BLOCKS) is not None
    assert mapped >= 2 * len(CORE[name])


def test_exact_names() -> None:
    assert hf_name("blk.1.attn_q.weight", "llama", 2) == "model.layers.1.self_attn.q_proj.weight"
    assert hf_name("blk.0.attn_k.bias", "qwen2", 2) == "model.layers.0.self_attn.k_proj.bias"
    assert (
        hf_name("blk.0.ffn_up_exps.weight", "mixtral", 1)
        == "model.layers.0.block_sparse_moe.experts.w3.weight"
    )
    assert hf_name("position_embd.weight", "gpt2", 1) == "transformer.wpe.weight"
    assert hf_name("blk.0.attn_qkv.weight", "gpt2", 1) == "transformer.h.0.attn.c_attn.weight"
    assert hf_name("blk.0.ffn_up.weight", "phi3", 1) == "model.layers.0.mlp.gate_up_proj.weight"


def test_unmapped() -> None:
    assert hf_name("blk.2.attn_q.weight", "llama", 2) is None  # past the last block
    assert hf_name("blk.01.attn_q.weight", "llama", 2) is None  # not how llama.cpp writes an index
    assert hf_name("output.weight", "gemma", 2) is None  # tied: no such tensor
    assert hf_name("token_embd.weight", "mamba", 2) is None
    assert hf_name("rope_freqs.weight", "llama", 2) is None
    assert hf_name("token_embd.scales", "llama", 2) is None


def test_hf_names_keeps_unknown_and_colliding_names() -> None:
    names = ["token_embd.weight", "rope_freqs.weight", "model.norm.weight", "output_norm.weight"]
    assert hf_names(names, "llama", 1) == {"token_embd.weight": "model.embed_tokens.weight"}


# --- `tree --hf-names` on files written by gguf-py's GGUFWriter ---------------------------------------


def _hf_llama_shapes(blocks: int) -> dict[str, list[int]]:
    """transformers' own LlamaForCausalLM state dict (on the meta device) for the config ggufs.llama writes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=ggufs.VOCAB,
        hidden_size=ggufs.EMBD,
        intermediate_size=ggufs.FFN,
        num_hidden_layers=blocks,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_tree_hf_names_are_transformers_names(tmp_path: Path) -> None:
    path = ggufs.llama(tmp_path / "tiny.gguf", blocks=2)
    renamed = invoke("tree", path, "--hf-names", "--json")
    assert renamed.exit_code == 0, renamed.stderr
    doc = json.loads(renamed.stdout)
    assert {t["name"]: t["shape"] for t in doc["tensors"]} == _hf_llama_shapes(2)
    assert doc["notes"] == []
    plain = json.loads(invoke("tree", path, "--json").stdout)
    assert doc["totals"] == plain["totals"]  # params, bytes and tensors unchanged by the names
    assert doc["totals"]["params"] == sum(math.prod(s) for _n, s, _t in ggufs.llama_tensors(2))
    assert plain["notes"] == ["--hf-names shows these tensors under Hugging Face names"]
    assert {t["name"] for t in plain["tensors"]} == {n for n, _s, _t in ggufs.llama_tensors(2)}


def test_hf_names_reads_map_back(tmp_path: Path) -> None:
    """A renamed source reads the GGUF tensor the HF name came from."""
    import torch

    from modinspect.sources.gguf import GGUFSource
    from modinspect.sources.gguf_names import with_hf_names

    path = ggufs.llama(tmp_path / "tiny.gguf", blocks=2)
    raw = GGUFSource(path)
    src = with_hf_names(GGUFSource(path))
    got = src.read_tensor("model.layers.1.input_layernorm.weight")
    assert torch.equal(got, raw.read_tensor("blk.1.attn_norm.weight"))
    chunks = list(src.iter_chunks("model.layers.0.input_layernorm.weight", 100))
    assert torch.equal(torch.cat(chunks), raw.read_tensor("blk.0.attn_norm.weight"))
    assert src.byte_range("model.norm.weight") == raw.byte_range("output_norm.weight")
    assert src.ggml_type("lm_head.weight") == "BF16"
    assert src.info("lm_head.weight").shape == raw.info("output.weight").shape


def test_hf_names_unknown_architecture(tmp_path: Path) -> None:
    tensors = [("token_embd.weight", (8, 32), gguf.GGMLQuantizationType.F32)]
    path = ggufs.write(tmp_path / "m.gguf", tensors, arch="mamba")
    result = invoke("tree", path, "--hf-names")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --hf-names: {path} has the architecture 'mamba'; Hugging Face names are known for "
        "gemma, gpt2, llama, mixtral, phi3, qwen2\n"
    )
    assert (
        "--hf-names" not in invoke("tree", path).stdout
    )  # no note for an architecture without a table


def test_hf_names_refuses_other_formats(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    result = invoke("tree", path, "--hf-names")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --hf-names applies to GGUF files; {path} is safetensors (its names are its own)\n"
    )


def _f32_llama_and_its_source(tmp_path: Path) -> tuple[Path, Path]:
    """A GGUF of float32 tensors, and a safetensors file of the same values under transformers' names, each
    GGUF name found from the HF name by gguf-py's TensorNameMap (not by the table under test)."""
    import torch
    from safetensors.torch import save_file

    from modinspect.sources.gguf import GGUFSource

    tensors = [(n, s, gguf.GGMLQuantizationType.F32) for n, s, _t in ggufs.llama_tensors(2)]
    path = ggufs.write(tmp_path / "f32.gguf", tensors, "llama", ggufs.llama_kv(2))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    raw = GGUFSource(path)
    hf: dict[str, torch.Tensor] = {}
    for key in _hf_llama_shapes(2):
        gname = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        assert gname is not None, key
        hf[key] = raw.read_tensor(gname).clone()
    save_file(hf, str(tmp_path / "hf.safetensors"))
    return path, tmp_path / "hf.safetensors"


def test_diff_hf_names_matches_a_gguf_with_its_source(tmp_path: Path) -> None:
    g, st = _f32_llama_and_its_source(tmp_path)
    result = invoke("diff", g, st, "--hf-names", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["compared"] == doc["identical"] == 21
    assert doc["only_in_a"] == doc["only_in_b"] == []
    # without: matched so all the same, since more of the other side's names match that way; a hint says so
    plain = json.loads(invoke("diff", g, st, "--json").stdout)
    assert plain["compared"] == plain["identical"] == 21 and plain["only_in_a"] == []
    assert plain["hints"] == [
        "A's GGUF tensor names were matched under the Hugging Face names of the checkpoint it was "
        "converted from (as --hf-names does)"
    ]


def test_diff_hf_names_needs_a_gguf_side(tmp_path: Path) -> None:
    _g, st = _f32_llama_and_its_source(tmp_path)
    result = invoke("diff", st, st, "--hf-names")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --hf-names applies to GGUF files; neither {st} (safetensors) nor {st} (safetensors) is one\n"
    )


def test_diff_fast_path_parses_hf_names() -> None:
    """cli/launch.py's Typer-free `diff` takes --hf-names as the Typer command does."""
    from modinspect.cli.launch import parse_diff

    args = parse_diff(["diff", "a.gguf", "b.safetensors", "--hf-names"])
    assert args is not None and args.hf_names is True
    plain = parse_diff(["diff", "a.gguf", "b.safetensors"])
    assert plain is not None and plain.hf_names is False


def test_mixtral_merged_experts(tmp_path: Path) -> None:
    """llama.cpp's merged experts: w1/w3 side by side are transformers' gate_up_proj, w2 its down_proj."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    experts, embd, ffn = 4, 32, 64
    f32 = gguf.GGMLQuantizationType.F32
    tensors = [
        ("blk.0.ffn_gate_inp.weight", (experts, embd), f32),
        ("blk.0.ffn_gate_exps.weight", (experts, ffn, embd), f32),
        ("blk.0.ffn_up_exps.weight", (experts, ffn, embd), f32),
        ("blk.0.ffn_down_exps.weight", (experts, embd, ffn), f32),
    ]
    path = ggufs.write(tmp_path / "moe.gguf", tensors, "llama", lambda w: w.add_block_count(1))
    doc = json.loads(invoke("tree", path, "--hf-names", "--json").stdout)
    got = {t["name"]: t["shape"] for t in doc["tensors"]}
    prefix = "model.layers.0.block_sparse_moe."
    assert set(got) == {
        prefix + s
        for s in ("gate.weight", "experts.w1.weight", "experts.w2.weight", "experts.w3.weight")
    }
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=embd,
        intermediate_size=ffn,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=experts,
    )
    with torch.device("meta"):
        hf = {k: list(v.shape) for k, v in MixtralForCausalLM(config).state_dict().items()}
    assert got[prefix + "gate.weight"] == hf["model.layers.0.mlp.gate.weight"]
    assert got[prefix + "experts.w2.weight"] == hf["model.layers.0.mlp.experts.down_proj"]
    w1, w3 = got[prefix + "experts.w1.weight"], got[prefix + "experts.w3.weight"]
    assert [w1[0], w1[1] + w3[1], w1[2]] == hf["model.layers.0.mlp.experts.gate_up_proj"]
