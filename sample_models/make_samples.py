"""Write the sample checkpoints next to this file, deterministically.

    python sample_models/make_samples.py

Every file is a few tens of KB. The same torch version writes the same bytes (and the same gguf-py version
the same tiny_llama.gguf).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import quantize_cnn, small_cnn, tiny_lm  # noqa: E402


def _trained_cnn() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = small_cnn().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=generator)
    y = torch.randint(0, 10, (4,), generator=generator)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return model.eval(), optimizer


def main(out: Path = HERE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    model, optimizer = _trained_cnn()
    state = model.state_dict()
    written = [
        out / "small_cnn.pth",
        out / "small_cnn.safetensors",
        out / "training_checkpoint.pt",
        out / "small_cnn_scripted.pt",
        out / "tiny_lm.pth",
        out / "tiny_lm.safetensors",
        out / "ddp.pt",
    ]
    torch.save(state, written[0])
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(written[1]), metadata={"format": "pt"}
    )
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": state,
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.25,
        },
        written[2],
    )
    torch.jit.script(model).save(str(written[3]))
    lm = tiny_lm()
    torch.save(lm.state_dict(), written[4])
    save_model(lm, str(written[5]), metadata={"format": "pt"})
    torch.save(_ddp_copy(state), written[6])
    written.append(_tiny_llama_gguf(out / "tiny_llama.gguf"))
    written.append(_small_cnn_int8(state, out / "small_cnn_int8.pth"))
    return written


def _tiny_llama_gguf(path: Path) -> Path:
    """A two-block Llama in llama.cpp's names and mixed types, quantized by gguf-py (needs the `test` extra)."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    dim, ffn, kv_dim, vocab, blocks = 32, 64, 16, 64, 2
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(dim)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(vocab)])

    def add(name: str, shape: tuple[int, ...], qtype: T) -> None:
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype == T.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, dim), T.Q8_0)
    for i in range(blocks):
        add(f"blk.{i}.attn_norm.weight", (dim,), T.F32)
        add(f"blk.{i}.attn_q.weight", (dim, dim), T.Q8_0)
        add(f"blk.{i}.attn_k.weight", (kv_dim, dim), T.Q8_0)
        add(f"blk.{i}.attn_v.weight", (kv_dim, dim), T.Q8_0)
        add(f"blk.{i}.attn_output.weight", (dim, dim), T.Q8_0)
        add(f"blk.{i}.ffn_norm.weight", (dim,), T.F32)
        add(f"blk.{i}.ffn_gate.weight", (ffn, dim), T.Q4_0)
        add(f"blk.{i}.ffn_up.weight", (ffn, dim), T.Q4_0)
        add(f"blk.{i}.ffn_down.weight", (dim, ffn), T.Q5_0)
    add("output_norm.weight", (dim,), T.F32)
    add("output.weight", (vocab, dim), T.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _small_cnn_int8(state: dict[str, torch.Tensor], path: Path) -> Path:
    """small_cnn.pth statically quantized by torch.ao (BatchNorm folded into the convs), as a state dict."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore")
        torch.save(quantize_cnn(state).state_dict(), path)
    return path


def _ddp_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """small_cnn as DistributedDataParallel saves it ('module.' before every key), one weight changed by 0.5
    and one bias by less than float32's tolerance: what `modinspect diff small_cnn.pth ddp.pt` shows."""
    ddp = {f"module.{k}": v.clone() for k, v in state.items()}
    ddp["module.classifier.weight"][0, 0] += 0.5
    ddp["module.features.0.bias"][0] += 1e-6
    return ddp


if __name__ == "__main__":
    for path in main():
        print(f"{path.name:28} {path.stat().st_size:>8,} bytes")
