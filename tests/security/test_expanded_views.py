"""Expanded (stride-0) views in DCP chunks: read as torch reads them, or refused when absurd for their storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hostile import dcp_with_expanded_chunk
from modinspect import open_source
from modinspect.errors import CorruptFileError

dcp = pytest.importorskip("torch.distributed.checkpoint")


def test_expanded_chunks_are_read_as_dcp_load_reads_them(tmp_path: Path) -> None:
    """A stride-0 chunk is gathered a chunk at a time, values as dcp.load's; one far larger than its storage is refused."""
    folder = dcp_with_expanded_chunk(tmp_path / "expanded", (3, 1000, 4), (0, 0, 0))
    reference = {"huge": torch.zeros(3, 1000, 4)}
    dcp.load(reference, checkpoint_id=str(folder))
    assert torch.equal(reference["huge"], torch.full((3, 1000, 4), 2.5))
    with open_source(str(folder)) as src:
        assert torch.equal(src.read_tensor("huge"), reference["huge"])
        pieces = list(src.iter_chunks("huge", 7))
        assert [p.numel() for p in pieces] == [7] * (12000 // 7) + [12000 % 7]
        assert torch.equal(torch.cat(pieces), reference["huge"].reshape(-1))

    folder = dcp_with_expanded_chunk(tmp_path / "huge", (2**20, 2**16), (0, 0))
    with open_source(str(folder)) as src:
        assert src.info("huge").shape == (2**20, 2**16)  # listed as declared
        with pytest.raises(CorruptFileError) as caught:
            next(src.iter_chunks("huge"))
    assert str(caught.value) == (
        f"{folder}/__0_0.distcp (bytes 0+{(folder / '__0_0.distcp').stat().st_size:,}): 'huge' claims 68,719,476,736 "
        "elements over a storage of 1 (a stride-0 or overlapping view): too large to read, and no real tensor needs it"
    )
