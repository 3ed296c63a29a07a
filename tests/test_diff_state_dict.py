"""`diff` of an entry point compares what its state_dict() holds: non-persistent buffers are not weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch

from conftest import invoke, live
from modinspect.run.source import open_source

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(4, 4)
            self.register_buffer("inv_freq", torch.arange(2.0), persistent=False)  # like rotary_emb.inv_freq
            self.register_buffer("position_ids", torch.arange(8), persistent=False)  # like BERT's
            self.register_buffer("scale", torch.ones(4))
    """
)


def test_state_dict_names_leave_out_non_persistent_buffers(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    src = open_source("nets.py:Rotary", base=tmp_path)
    assert (
        src.state_dict_names() == list(live(src).state_dict()) == ["scale", "fc.weight", "fc.bias"]
    )
    assert set(src.names()) == {
        "scale",
        "fc.weight",
        "fc.bias",
        "inv_freq",
        "position_ids",
    }  # tree still shows them


def test_diff_of_an_entry_point_against_its_own_state_dict_is_identical(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    src = open_source("nets.py:Rotary", base=tmp_path)
    torch.save(live(src).state_dict(), tmp_path / "ckpt.pt")
    result = invoke("diff", "nets.py:Rotary", "ckpt.pt", "--json", cwd=tmp_path)
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["only_in_a"], doc["only_in_b"]) == (0, [], [])
    assert doc["compared"] == 3
