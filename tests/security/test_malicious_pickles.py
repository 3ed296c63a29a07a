"""Malicious pickles: every payload, in every carrier, through every entry point, runs nothing.

Each payload's action creates a marker file; refusals assert the marker never appears and that the
one error line names the payload's unsafe globals and --unsafe-pickle. Control tests prove each
payload really runs under plain pickle, and that --unsafe-pickle (and nothing else) lets it through.
"""

from __future__ import annotations

import pickle
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from conftest import invoke
from hostile import (
    BY_NAME,
    CARRIERS,
    INPUT_CARRIERS,
    PAYLOADS,
    WEIGHTS_CARRIERS,
    Payload,
    as_pickle,
    body_of,
    clean_checkpoint,
    write_victim,
)
from modinspect.cli.app import app
from modinspect.errors import UnknownFormatError, UnsafePickleError
from modinspect.run.source import open_source
from modinspect.sources.pickle.gate import Gate

_LATE: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _no_late_markers() -> Iterator[None]:
    """Payloads that start a process (Popen) would create their marker a moment after the call returned.

    Every marker a refusal test checked is checked again once the module is done, after a pause.
    """
    yield
    if _LATE:
        time.sleep(0.5)
        assert [m for m in _LATE if m.exists()] == []


def marker_for(tmp_path: Path, payload: Payload) -> Path:
    marker = tmp_path / "markers" / f"PWNED-{payload.name}"
    marker.parent.mkdir(exist_ok=True)
    if payload.asynchronous:
        _LATE.append(marker)
    return marker


def build(carrier: str, payload: Payload, tmp_path: Path) -> tuple[Path, Path]:
    marker = marker_for(tmp_path, payload)
    return CARRIERS[carrier](tmp_path, body_of(payload, marker), payload.protocol), marker


def assert_refused(result: Result, payload: Payload, marker: Path) -> None:
    stderr = result.stderr
    if stderr.startswith(
        "note: importing "
    ):  # [tool.modinspect] said which entry point it imports first
        stderr = stderr.split("\n", 1)[1]
    assert result.exit_code == 2, stderr
    assert result.stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for name in payload.globals:
        assert f"'{name}'" in stderr, stderr
    assert "could run arbitrary code; pass --unsafe-pickle only if you trust the file" in stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert not marker.exists()


# ---------------------------------------------------------------- the payloads are real


@pytest.mark.parametrize(
    "payload", [p for p in PAYLOADS if p.runs_under_plain_pickle], ids=lambda p: p.name
)
def test_payload_runs_under_plain_pickle(tmp_path: Path, payload: Payload) -> None:
    """Control: plain pickle.loads runs each payload, so the refusals below mean something."""
    marker = tmp_path / "CONTROL"
    result = pickle.loads(as_pickle(payload.body(marker), payload.protocol))
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=10)
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_gate_names_exactly_the_payload_globals(tmp_path: Path, payload: Payload) -> None:
    """The gate reads the whole pickle with stand-ins, so the refusal names every global, and runs none."""
    marker = tmp_path / "MARKER"
    with pytest.raises(UnsafePickleError) as info:
        Gate("evil").load(as_pickle(payload.body(marker), max(payload.protocol, 2)))
    assert info.value.globals == sorted(payload.globals)
    assert not marker.exists()


# ---------------------------------------------------------------- the Python API, every carrier


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_open_source_refuses(tmp_path: Path, payload: Payload, carrier: str) -> None:
    path, marker = build(carrier, payload, tmp_path)
    with pytest.raises(UnsafePickleError) as info:
        open_source(str(path))
    assert info.value.globals == sorted(payload.globals)
    message = str(info.value)
    assert all(f"'{g}'" in message for g in payload.globals) and "--unsafe-pickle" in message
    assert "\n" not in message
    assert not marker.exists()


def test_protocol_0_raw_pickle_is_not_a_checkpoint_and_is_never_unpickled(tmp_path: Path) -> None:
    """A text-protocol file does not start with PROTO: it is refused by format, even under --unsafe-pickle."""
    for payload in (BY_NAME["global-p0-exec"], BY_NAME["global-p0-os-system"]):
        marker = marker_for(tmp_path, payload)
        path = tmp_path / "p0.pkl"
        path.write_bytes(as_pickle(payload.body(marker), 0))
        for unsafe in (False, True):
            with pytest.raises(UnknownFormatError, match="is not a checkpoint modinspect reads"):
                open_source(str(path), unsafe_pickle=unsafe)
            result = invoke("tree", path, *(["--unsafe-pickle"] if unsafe else []))
            assert result.exit_code == 2
            assert result.stderr == (
                f"error: {path} is not a checkpoint modinspect reads (safetensors, GGUF, torch .pt/.pth/.bin, "
                "TorchScript, or a sharded index)\n"
            )
        assert not marker.exists()


# ---------------------------------------------------------------- every CLI entry point

CLI_PAYLOADS = [BY_NAME[n] for n in ("reduce-os-system", "global-p0-exec", "memo-memoize-decoy")]


def _has_load() -> bool:
    return any(
        (c.name or (c.callback.__name__ if c.callback else "")) == "load"
        for c in app.registered_commands
    )


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_tree_refuses(tmp_path: Path, payload: Payload, carrier: str) -> None:
    path, marker = build(carrier, payload, tmp_path)
    assert_refused(invoke("tree", path), payload, marker)
    assert_refused(invoke("tree", path, "--json"), payload, marker)


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_diff_refuses_either_side(tmp_path: Path, payload: Payload, carrier: str) -> None:
    path, marker = build(carrier, payload, tmp_path)
    clean = clean_checkpoint(tmp_path)
    assert_refused(invoke("diff", path, clean), payload, marker)
    assert_refused(invoke("diff", clean, path), payload, marker)


@pytest.mark.parametrize("carrier", WEIGHTS_CARRIERS)
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_weights_refuses_on_tree_stats_and_diff(
    tmp_path: Path, payload: Payload, carrier: str
) -> None:
    path, marker = build(carrier, payload, tmp_path)
    entry = write_victim(tmp_path)
    clean = clean_checkpoint(tmp_path)
    assert_refused(invoke("tree", entry, "--weights", path, cwd=tmp_path), payload, marker)
    assert_refused(
        invoke("tree", entry, "--weights", path, "--no-strict", cwd=tmp_path), payload, marker
    )
    assert_refused(
        invoke("stats", entry, "--weights", path, "--input-shape", "2,4", cwd=tmp_path),
        payload,
        marker,
    )
    assert_refused(invoke("diff", entry, clean, "--weights-a", path, cwd=tmp_path), payload, marker)
    assert_refused(invoke("diff", clean, entry, "--weights-b", path, cwd=tmp_path), payload, marker)


@pytest.mark.parametrize("carrier", INPUT_CARRIERS)
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_stats_input_refuses(tmp_path: Path, payload: Payload, carrier: str) -> None:
    path, marker = build(carrier, payload, tmp_path)
    entry = write_victim(tmp_path)
    assert_refused(invoke("stats", entry, "--input", path, cwd=tmp_path), payload, marker)
    # --unsafe-pickle governs the model's files; an input file is always read weights-only.
    result = invoke("stats", entry, "--input", path, "--unsafe-pickle", cwd=tmp_path)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert all(f"'{g}'" in result.stderr for g in payload.globals), result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_project_config_refuses_model_and_weights(tmp_path: Path, payload: Payload) -> None:
    """[tool.modinspect] naming the file as the model, or as the weights of an entry point."""
    path, marker = build("zip-pt", payload, tmp_path)
    write_victim(tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[tool.modinspect]\nmodel = "{path.name}"\n')
    assert_refused(invoke("tree", cwd=tmp_path), payload, marker)
    pyproject.write_text(
        f'[tool.modinspect]\nmodel = "victim.py:build"\nweights = "{path.name}"\ninput_shape = "2,4"\n'
    )
    assert_refused(invoke("tree", cwd=tmp_path), payload, marker)
    assert_refused(invoke("stats", cwd=tmp_path), payload, marker)
    pyproject.write_text(f'[tool.modinspect]\nmodel = "victim.py:build"\ninput = "{path.name}"\n')
    assert_refused(invoke("stats", cwd=tmp_path), payload, marker)


@pytest.mark.skipif(not _has_load(), reason="the load command is not in this build")
@pytest.mark.parametrize("carrier", WEIGHTS_CARRIERS)
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_load_refuses_and_writes_nothing(tmp_path: Path, payload: Payload, carrier: str) -> None:
    path, marker = build(carrier, payload, tmp_path)
    entry = write_victim(tmp_path)
    out = tmp_path / "out.safetensors"
    assert_refused(invoke("load", entry, path, cwd=tmp_path), payload, marker)
    assert_refused(invoke("load", entry, path, "--dry-run", cwd=tmp_path), payload, marker)
    assert_refused(invoke("load", entry, path, "--out", out, cwd=tmp_path), payload, marker)
    assert not out.exists()
    assert [
        p.name for p in tmp_path.iterdir() if "modinspect-" in p.name
    ] == []  # no stray temporary file


@pytest.mark.skipif(not _has_load(), reason="the load command is not in this build")
@pytest.mark.parametrize("payload", CLI_PAYLOADS, ids=lambda p: p.name)
def test_load_refuses_a_hostile_torchscript_model(tmp_path: Path, payload: Payload) -> None:
    path, marker = build("torchscript-data-pkl", payload, tmp_path)
    clean = clean_checkpoint(tmp_path)
    assert_refused(invoke("load", path, clean), payload, marker)


# ---------------------------------------------------------------- --unsafe-pickle is the only way through

UNSAFE_OK = ["zip-pt", "legacy-pt", "training-checkpoint", "sharded-bin"]


@pytest.mark.parametrize("carrier", UNSAFE_OK)
@pytest.mark.parametrize("name", ["reduce-builtins-exec", "global-p0-exec", "memo-binput-binget"])
def test_unsafe_pickle_runs_the_payload_and_warns(tmp_path: Path, name: str, carrier: str) -> None:
    payload = BY_NAME[name]
    path, marker = build(carrier, payload, tmp_path)
    refused = invoke("tree", path)
    assert_refused(refused, payload, marker)
    result = invoke("tree", path, "--unsafe-pickle")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: --unsafe-pickle: fully unpickling ")
    assert "builtins.exec" in lines[0] and lines[0].endswith("this runs code from the file")
    assert marker.exists()  # the flag really is a way through: the harmless payload ran


@pytest.mark.parametrize("carrier", ["zip-pt", "legacy-pt", "sharded-bin"])
def test_unsafe_pickle_on_weights_and_diff(tmp_path: Path, carrier: str) -> None:
    payload = BY_NAME["reduce-builtins-exec"]
    path, marker = build(carrier, payload, tmp_path)
    entry = write_victim(tmp_path)
    result = invoke("tree", entry, "--weights", path, "--unsafe-pickle", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: --unsafe-pickle: fully unpickling ")
    assert marker.exists()
    marker.unlink()
    result = invoke("diff", path, clean_checkpoint(tmp_path), "--unsafe-pickle")
    assert result.exit_code in (0, 1), result.stderr
    assert result.stderr.startswith("warning: --unsafe-pickle: fully unpickling ")
    assert marker.exists()


def test_unsafe_pickle_on_a_raw_pickle_runs_it_then_fails_cleanly(tmp_path: Path) -> None:
    """torch.load only reads pickles behind the legacy magic number, but it unpickles the first one to find out."""
    payload = BY_NAME["reduce-builtins-exec"]
    path, marker = build("raw-pkl", payload, tmp_path)
    result = invoke("tree", path, "--unsafe-pickle")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path} failed to unpickle even with --unsafe-pickle")
    assert result.stderr.count("\n") == 1
    assert marker.exists()


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_unsafe_pickle_on_torchscript_still_cannot_import_python(
    tmp_path: Path, member: str
) -> None:
    """TorchScript's own loader resolves no Python globals, so even the flag runs nothing there."""
    payload = BY_NAME["reduce-builtins-exec"]
    marker = marker_for(tmp_path, payload)
    path = CARRIERS[f"torchscript-{member.replace('.', '-')}"](
        tmp_path, body_of(payload, marker), 2
    )
    assert_refused(invoke("tree", path), payload, marker)
    result = invoke("tree", path, "--unsafe-pickle")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: {path} is not a loadable TorchScript archive: Unknown type name"
    )
    assert result.stderr.count("\n") == 1
    assert not marker.exists()
