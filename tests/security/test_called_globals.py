"""Globals a pickle calls: --allow-global never builds one that runs code, and the notes never suggest it.

Payloads here are live: each creates its marker file when unpickled for real (checked against plain
pickle.loads), so every test also checks that the marker never appears.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import pytest
import torch

from conftest import invoke
from hostile import (
    BY_NAME,
    CALLED_PAYLOADS,
    CARRIERS,
    as_pickle,
    body_of,
    clean_checkpoint,
    state_dict,
    write_victim,
    zip_pt,
)
from modinspect.errors import UsageError
from modinspect.run.source import open_source
from modinspect.sources.pickle.gate import GatePolicy

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


@pytest.mark.parametrize(
    "name",
    [
        "posix.system",
        "builtins.exec",
        "subprocess.Popen",
        "uuid._get_command_stdout",
        "logging.FileHandler",
        "imaplib.IMAP4_stream",
        "_osx_support._read_output",
        "torch.utils.collect_env.run",
    ],
)
def test_allow_global_refuses_a_name_that_runs_code(tmp_path: Path, name: str) -> None:
    path = zip_pt(tmp_path, body_of(CALLED["uuid-get-command-stdout"], tmp_path / "RAN"))
    result = invoke("tree", path, "--allow-global", name)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: --allow-global {name}: {name} can run code or commands when called, so it is never built for "
        "real; pass --unsafe-pickle only if you trust the file\n",
    )
    assert not _wait_for(tmp_path / "RAN")
    with pytest.raises(
        UsageError, match=r"can run code or commands when called"
    ):  # the library API too
        GatePolicy(allow_globals=frozenset({name}))


def test_the_note_never_suggests_allow_global_for_a_name_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "RAN"
    path = zip_pt(tmp_path, body_of(CALLED["uuid-get-command-stdout"], marker))
    with open_source(str(path)) as src:
        assert src.notes == [
            "read without importing uuid._get_command_stdout: shown as stand-ins, nothing of "
            "theirs ran"
        ]
    torch.save({"state_dict": state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    with open_source(str(tmp_path / "ns.pt")) as src:
        assert src.notes == [
            "read without importing argparse.Namespace: shown as stand-ins, nothing of theirs ran "
            "(--allow-global argparse.Namespace builds a real one, if you trust it)"
        ]
    assert not _wait_for(marker)


def test_allow_global_of_a_function_warns(tmp_path: Path) -> None:
    """math.fsum is harmless, but a function is called with the file's arguments: the user hears it."""
    torch.save({"state_dict": state_dict(), "total": 0}, tmp_path / "f.pt")
    path = zip_pt(tmp_path, lambda memo: b"cmath\nfsum\n](K\x01K\x02e\x85R", "fsum.pt")
    result = invoke("tree", path, "--allow-global", "math.fsum")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "warning: --allow-global math.fsum is a function, not a data class: the file calls it "
        "for real, with arguments of its choosing\n"
    )
    result = invoke(
        "tree", tmp_path / "f.pt", "--allow-global", "argparse.Namespace"
    )  # a class: no warning
    assert (result.exit_code, result.stderr) == (0, "")


def test_the_refusal_list_payloads_are_still_refused(tmp_path: Path) -> None:
    """--allow-global of an unrelated data class changes nothing for a file that names posix.system."""
    path = zip_pt(tmp_path, body_of(BY_NAME["reduce-os-system"], tmp_path / "RAN"))
    result = invoke("tree", path, "--allow-global", "argparse.Namespace")
    assert result.exit_code == 2 and "needs 'posix.system' to unpickle" in result.stderr
    assert not _wait_for(tmp_path / "RAN")


# ---------------------------------------------------------------- torch.load would call X


def _warning(names: tuple[str, ...]) -> str:
    it = "it" if len(names) == 1 else "them"
    return (
        f"warning: torch.load would call {', '.join(names)}: shown as stand-ins here, nothing ran; fully "
        f"unpickling the file (torch.load without weights_only=True, or --unsafe-pickle) runs {it}\n"
    )


@pytest.mark.parametrize("carrier", ["zip-pt", "legacy-pt", "sharded-bin", "peft-adapter-bin"])
@pytest.mark.parametrize("name", sorted(CALLED))
def test_a_called_global_off_the_refusal_list_is_named_in_a_warning(
    tmp_path: Path, name: str, carrier: str
) -> None:
    """Five live payloads whose globals are not refused by name: listed, exit 0, and every one named on stderr
    and in --json's would_call; the marker never appears."""
    payload, marker = CALLED[name], tmp_path / "RAN"
    path = CARRIERS[carrier](tmp_path, body_of(payload, marker), payload.protocol)
    result = invoke("tree", path)
    assert (result.exit_code, result.stderr) == (0, _warning(payload.globals))
    result = invoke("tree", path, "--json")
    assert result.exit_code == 0 and result.stderr == _warning(payload.globals)
    assert json.loads(result.stdout)["would_call"] == list(payload.globals)
    assert not _wait_for(marker)


def test_weights_and_input_files_carry_the_warning_or_are_refused(tmp_path: Path) -> None:
    payload, marker = CALLED["torch-collect-env-run"], tmp_path / "RAN"
    entry = write_victim(tmp_path)
    path = zip_pt(tmp_path, body_of(payload, marker))
    result = invoke("tree", f"{tmp_path}/{entry}", "--weights", path, "--json")
    assert result.exit_code == 0 and result.stderr == _warning(payload.globals)
    assert json.loads(result.stdout)["would_call"] == ["torch.utils.collect_env.run"]
    result = invoke(
        "stats", f"{tmp_path}/{entry}", "--input", path
    )  # inputs allow no stand-ins at all
    assert result.exit_code == 2 and "torch.utils.collect_env.run" in result.stderr
    assert not _wait_for(marker)


def test_known_data_classes_and_values_are_not_warned_about(tmp_path: Path) -> None:
    """A Namespace, a torch.nn layer, a defaultdict(list): calling them only stores data."""
    import collections

    torch.save(
        {
            "state_dict": state_dict(),
            "args": argparse.Namespace(lr=0.1),
            "layer": torch.nn.Linear(2, 2),
            "by_name": collections.defaultdict(list, {"a": [1]}),
        },
        tmp_path / "ok.pt",
    )
    with open_source(str(tmp_path / "ok.pt")) as src:
        assert src.would_call == [] and src.warnings == []
        assert "argparse.Namespace" in src.standins and "collections.defaultdict" in src.standins


@pytest.mark.parametrize("name", sorted(CALLED))
def test_diff_load_and_stats_json_name_the_called_globals(tmp_path: Path, name: str) -> None:
    """Each command's --json carries the names stderr warns about: diff per side, load and stats the checkpoint's."""
    payload, marker = CALLED[name], tmp_path / "RAN"
    path, clean = zip_pt(tmp_path, body_of(payload, marker)), clean_checkpoint(tmp_path)
    entry = write_victim(tmp_path)
    names = list(payload.globals)
    for a, b, want_a, want_b in ((path, clean, names, []), (clean, path, [], names)):
        result = invoke("diff", a, b, "--json")
        assert result.exit_code == 0 and result.stderr == _warning(payload.globals)
        doc = json.loads(result.stdout)
        assert (doc["would_call_a"], doc["would_call_b"]) == (want_a, want_b)
    result = invoke("load", f"{tmp_path}/{entry}", path, "--dry-run", "--json")
    assert result.exit_code == 0 and result.stderr == _warning(payload.globals)
    assert json.loads(result.stdout)["would_call"] == names
    result = invoke(
        "stats", f"{tmp_path}/{entry}", "--weights", path, "--input-shape", "2,4", "--json"
    )
    assert result.exit_code == 0 and result.stderr == _warning(payload.globals)
    assert json.loads(result.stdout)["would_call"] == names
    assert not _wait_for(marker)


def test_clean_checkpoints_have_empty_would_call_in_every_document(tmp_path: Path) -> None:
    clean, entry = clean_checkpoint(tmp_path), write_victim(tmp_path)
    doc = json.loads(invoke("diff", clean, clean, "--json").stdout)
    assert (doc["would_call_a"], doc["would_call_b"]) == ([], [])
    result = invoke("load", f"{tmp_path}/{entry}", clean, "--dry-run", "--json")
    assert (result.exit_code, json.loads(result.stdout)["would_call"]) == (0, [])
    result = invoke(
        "stats", f"{tmp_path}/{entry}", "--weights", clean, "--input-shape", "2,4", "--json"
    )
    assert (result.exit_code, json.loads(result.stdout)["would_call"]) == (0, [])
