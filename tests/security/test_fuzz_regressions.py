"""Every crash the fuzzer found, as a fixed input. Each escaped as a non-modinspect exception before its fix.

(Crashes found by hand while building the corpus are regression cases in test_structural.py and
test_malicious_pickles.py; SECURITY.md lists them all.)
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import save_file

from modinspect.analysis.tree import build_tree
from modinspect.errors import CorruptFileError
from modinspect.run.source import open_source


def test_regression_safetensors_dtype_that_is_a_list(tmp_path: Path) -> None:
    """test_long_fuzz_safetensors: `"dtype": []` is unhashable, so `code not in ST_DTYPES` raised TypeError."""
    header = b'{"a": {"dtype": [], "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    with pytest.raises(CorruptFileError, match=r"it gives 'a' the unknown dtype \[\]$"):
        open_source(str(path))
    for weird in (b"{}", b'{"F32": 1}', b"null", b"3"):
        header = b'{"a": {"dtype": ' + weird + b', "shape": [1], "data_offsets": [0, 4]}}'
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
        with pytest.raises(CorruptFileError, match="the unknown dtype"):
            open_source(str(path))


def _zip(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
    return path


def test_regression_invalid_escape_in_a_global_name(tmp_path: Path) -> None:
    """test_long_fuzz_zip_bytes_and_headers: one flipped byte turned 'torch._utils' into 't\\orch._utils'.

    pickletools escape-decodes GLOBAL's text, and '\\o' made it warn (DeprecationWarning): an exception
    wherever warnings are errors, as in this suite. The gate decodes quietly and stands in for the name.
    """
    path = _zip(tmp_path / "x.pt", b"\x80\x02ct\\orch._utils\n_rebuild_tensor_v2\n.")
    with pytest.raises(
        CorruptFileError, match=r"holds no state dict \(t\\orch\._utils\._rebuild_tensor_v2\)"
    ):
        open_source(str(path))


@pytest.mark.parametrize("pkl", [b"\x80\x02S'\\o'\n.", b"\x80\x02}S'k\\q'\nS'\\o'\ns."])
def test_regression_invalid_escape_in_a_string_reaches_the_unpickler_quietly(
    tmp_path: Path, pkl: bytes
) -> None:
    """The same escape in a STRING opcode passes the scan; the unpickler decodes it again, also quietly."""
    path = _zip(tmp_path / "x.pt", pkl)
    with pytest.raises(CorruptFileError, match="holds no state dict"):
        open_source(str(path))


def test_regression_shard_name_longer_than_the_file_system_allows(tmp_path: Path) -> None:
    """test_long_fuzz_index: a 300-character shard name made is_file() raise OSError (ENAMETOOLONG)."""
    folder = tmp_path / "model"
    folder.mkdir()
    import torch

    save_file({"w": torch.ones(2)}, str(folder / "a.safetensors"))
    name = "a" * 300
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "a.safetensors", "": name}})
    )
    with pytest.raises(CorruptFileError, match=f"names shard '{name}', which cannot be followed"):
        open_source(str(folder))


def test_regression_tree_of_every_fuzz_base_still_builds(tmp_path: Path) -> None:
    """The fixes refuse more; they must not refuse valid files: a plain save_file round trip."""
    import torch

    path = tmp_path / "ok.safetensors"
    save_file({"h.0.w": torch.ones(2), "h.1.w": torch.ones(2)}, str(path))
    with open_source(str(path)) as src:
        assert build_tree(src).totals.params == 4


def test_regression_lzma_method_on_a_stored_storage(tmp_path: Path) -> None:
    """test_long_fuzz_zip_bytes_and_headers: central directory method 14 (LZMA) on a stored storage entry
    made zipfile raise lzma.LZMAError on read, which no handler knew."""
    import io

    import torch

    from hostile import CD_METHOD, central_entries, entry_named, patch

    buf = io.BytesIO()
    torch.save({"n": torch.tensor(5)}, buf)
    raw = buf.getvalue()
    path = tmp_path / "x.pt"
    path.write_bytes(
        patch(raw, central_entries(raw)[entry_named(raw, "/data/0")] + CD_METHOD, "<H", 14)
    )
    with open_source(str(path)) as src:  # listing reads no storage
        with pytest.raises(CorruptFileError, match="is a damaged zip file"):
            src.read_tensor("n")
        with pytest.raises(CorruptFileError, match="is a damaged zip file"):
            list(src.iter_chunks("n"))
