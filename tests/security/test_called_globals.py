"""Globals a pickle calls: --allow-global never builds one that runs code, and the notes never suggest it.

Payloads here are live: each creates its marker file when unpickled for real (checked against plain
pickle.loads), so every test also checks that the marker never appears.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import pytest
import torch

from conftest import invoke
from hostile import BY_NAME, CALLED_PAYLOADS, as_pickle, body_of, state_dict, zip_pt
from modinspect.errors import UsageError
from modinspect.sources import open_source
from modinspect.sources.pickle_gate import GatePolicy

CALLED = {p.name: p for p in CALLED_PAYLOADS}


def _wait_for(marker: Path) -> bool:
    for _ in range(20):  # a started process may create it a moment later
        if marker.exists():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("name", sorted(CALLED))
def test_called_payload_runs_under_plain_pickle(tmp_path: Path, name: str) -> None:
    """Control: each payload really runs when unpickled (so a missing marker later means nothing ran)."""
    marker = tmp_path / "RAN"
    try:
        obj = pickle.loads(as_pickle(CALLED[name].body(marker), 2))
        if hasattr(obj, "close"):  # the FileHandler holds its file open
            obj.close()
    except Exception:  # IMAP4_stream runs its command, then finds no IMAP greeting
        pass
    assert _wait_for(marker)


@pytest.mark.parametrize("name", ["posix.system", "builtins.exec", "subprocess.Popen", "uuid._get_command_stdout",
                                  "logging.FileHandler", "imaplib.IMAP4_stream", "_osx_support._read_output",
                                  "torch.utils.collect_env.run"])
def test_allow_global_refuses_a_name_that_runs_code(tmp_path: Path, name: str) -> None:
    path = zip_pt(tmp_path, body_of(CALLED["uuid-get-command-stdout"], tmp_path / "RAN"))
    result = invoke("tree", path, "--allow-global", name)
    assert (result.exit_code, result.stderr) == (  # type: ignore[attr-defined]
        2, f"error: --allow-global {name}: {name} can run code or commands when called, so it is never built for "
           "real; pass --unsafe-pickle only if you trust the file\n")
    assert not _wait_for(tmp_path / "RAN")
    with pytest.raises(UsageError, match=r"can run code or commands when called"):  # the library API too
        GatePolicy(allow_globals=frozenset({name}))


def test_the_note_never_suggests_allow_global_for_a_name_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "RAN"
    path = zip_pt(tmp_path, body_of(CALLED["uuid-get-command-stdout"], marker))
    with open_source(str(path)) as src:
        assert src.notes == ["read without importing uuid._get_command_stdout: shown as stand-ins, nothing of "
                             "theirs ran"]
    torch.save({"state_dict": state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    with open_source(str(tmp_path / "ns.pt")) as src:
        assert src.notes == ["read without importing argparse.Namespace: shown as stand-ins, nothing of theirs ran "
                             "(--allow-global argparse.Namespace builds a real one, if you trust it)"]
    assert not _wait_for(marker)


def test_allow_global_of_a_function_warns(tmp_path: Path) -> None:
    """math.fsum is harmless, but a function is called with the file's arguments: the user hears it."""
    torch.save({"state_dict": state_dict(), "total": 0}, tmp_path / "f.pt")
    path = zip_pt(tmp_path, lambda memo: b"cmath\nfsum\n](K\x01K\x02e\x85R", "fsum.pt")
    result = invoke("tree", path, "--allow-global", "math.fsum")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    assert result.stderr == ("warning: --allow-global math.fsum is a function, not a data class: the file calls it "  # type: ignore[attr-defined]
                             "for real, with arguments of its choosing\n")
    result = invoke("tree", tmp_path / "f.pt", "--allow-global", "argparse.Namespace")  # a class: no warning
    assert (result.exit_code, result.stderr) == (0, "")  # type: ignore[attr-defined]


def test_the_refusal_list_payloads_are_still_refused(tmp_path: Path) -> None:
    """--allow-global of an unrelated data class changes nothing for a file that names posix.system."""
    path = zip_pt(tmp_path, body_of(BY_NAME["reduce-os-system"], tmp_path / "RAN"))
    result = invoke("tree", path, "--allow-global", "argparse.Namespace")
    assert result.exit_code == 2 and "needs 'posix.system' to unpickle" in result.stderr  # type: ignore[attr-defined]
    assert not _wait_for(tmp_path / "RAN")
