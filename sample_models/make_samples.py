"""Write the sample checkpoints next to this file, deterministically.

    python sample_models/make_samples.py

Every file is a few tens of KB. The same torch version writes the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import small_cnn, tiny_lm  # noqa: E402


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
    save_file({k: v.contiguous() for k, v in state.items()}, str(written[1]), metadata={"format": "pt"})
    torch.save(
        {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(), "loss": 0.25},
        written[2],
    )
    torch.jit.script(model).save(str(written[3]))
    lm = tiny_lm()
    torch.save(lm.state_dict(), written[4])
    save_model(lm, str(written[5]), metadata={"format": "pt"})
    torch.save(_ddp_copy(state), written[6])
    return written


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
