"""Standard buffer names (BatchNorm running stats, ...) count as buffers in a bare state dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import invoke
from modinspect import build_tree, open_source
from modinspect.sources.kinds import checkpoint_kind


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.InstanceNorm2d(4, track_running_stats=True),
    )


def test_checkpoint_kind_rule() -> None:
    assert checkpoint_kind("layer1.0.bn1.running_mean") == "buffer"
    assert checkpoint_kind("bn.num_batches_tracked") == "buffer"
    assert checkpoint_kind("num_batches_tracked") == "buffer"
    assert checkpoint_kind("bn.weight") == "unknown"
    assert (
        checkpoint_kind("attn.scale") == "unknown"
    )  # a parameter in some modules, a buffer in others
    assert checkpoint_kind("running_mean_proj.weight") == "unknown"
    assert checkpoint_kind("bn.running_mean", is_parameter=True) == "parameter"


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_batchnorm_checkpoint_counts_buffers(tmp_path: Path, suffix: str) -> None:
    model = _model()
    path = tmp_path / f"bn{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    with open_source(str(path)) as src:
        report = build_tree(src)
        kinds = {t.name: t.kind for t in src.tensors}
    buffer_names = {name for name, _ in model.named_buffers()}
    assert {n for n, k in kinds.items() if k == "buffer"} == buffer_names
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())  # 4+4+1 + 4+4+1
    assert report.totals.params == sum(p.numel() for p in model.parameters())  # 112 + 8
    result = invoke("tree", str(path), "--json")
    doc = json.loads(result.stdout)
    assert doc["totals"]["buffers"] == 18
    assert doc["totals"]["params"] == 120
