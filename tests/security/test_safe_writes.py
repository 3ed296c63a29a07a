"""Safe writes: atomic_write leaves the old file or the new one, never a torn one, and never clobbers an input.

A child process writes slowly through atomic_write (many flushed chunks) and is SIGKILLed at a range
of moments; whatever the moment, the target holds exactly its old bytes (or is still absent), or
exactly the complete new bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import invoke
from hostile import clean_checkpoint, write_victim
from modinspect.cli.app import app
from modinspect.errors import UsageError
from modinspect.files import atomic_write

CHUNK, CHUNKS = 4096, 150
NEW = b"N" * (CHUNK * CHUNKS)
OLD = b"old content that must survive\n" * 100

SLOW_WRITER = f"""
import sys, time
from pathlib import Path
from modinspect.files import atomic_write

def write(tmp):
    with open(tmp, "wb") as f:
        for i in range({CHUNKS}):
            f.write(b"N" * {CHUNK})
            f.flush()
            if i == 0:
                print("WRITING", flush=True)
            time.sleep(0.002)

atomic_write(Path(sys.argv[1]), write, force=True)
print("DONE", flush=True)
"""


def strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".modinspect-" in p.name)


def run_and_kill(target: Path, delay: float | None) -> str:
    """Start the slow writer; once it has begun writing, SIGKILL it after `delay` s (None: let it finish)."""
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "WRITING"
        if delay is None:
            assert child.wait(timeout=60) == 0
            return "finished"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        return "killed" if child.returncode == -signal.SIGKILL else "finished"


@pytest.mark.parametrize("existed", [True, False], ids=["over-an-old-file", "new-file"])
def test_sigkill_mid_write_leaves_the_old_file_or_none_never_a_torn_one(
    tmp_path: Path, existed: bool
) -> None:
    target = tmp_path / "out.safetensors"
    outcomes = []
    for delay in (0.0, 0.01, 0.03, 0.08, 0.15, 0.25, 0.4, 0.6):
        if existed:
            target.write_bytes(OLD)
        elif target.exists():
            target.unlink()
        how = run_and_kill(target, delay)
        if target.exists():
            content = target.read_bytes()
            assert content in (OLD, NEW) if existed else content == NEW, (
                f"torn file after kill at {delay} s"
            )
            outcomes.append((how, "new" if content == NEW else "old"))
        else:
            assert not existed, f"the old file vanished after kill at {delay} s"
            outcomes.append((how, "absent"))
    # The kills that landed mid-write (most of them) left the old state and, at most, a stray temporary file.
    mid_write = [o for o in outcomes if o == ("killed", "old" if existed else "absent")]
    assert len(mid_write) >= 3, outcomes
    assert all(".modinspect-" in name and name.endswith(".tmp") for name in strays(tmp_path))


def test_an_uninterrupted_slow_write_replaces_the_file_whole(tmp_path: Path) -> None:
    """Control for the kill test: the same writer, left alone, does write every byte."""
    target = tmp_path / "out.safetensors"
    target.write_bytes(OLD)
    assert run_and_kill(target, None) == "finished"
    assert target.read_bytes() == NEW
    assert strays(tmp_path) == []


def _never(_tmp: Path) -> None:
    raise AssertionError("the writer must not be called")


def _writes(data: bytes) -> Callable[[Path], None]:
    """A writer that writes `data` to the temporary file."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write


def _untouched(path: Path, before: tuple[bytes, int]) -> None:
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    target = tmp_path / "out.pt"
    target.write_bytes(OLD)
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    with pytest.raises(UsageError, match=f"^{target} exists; pass --force to overwrite it$"):
        atomic_write(target, _never)
    _untouched(target, before)
    assert strays(tmp_path) == []


def test_refuses_to_overwrite_an_input_even_with_force(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(OLD)
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.pt").symlink_to(target)
    for spelled in (target, tmp_path / "sub" / ".." / "ckpt.pt", tmp_path / "alias.pt"):
        with pytest.raises(UsageError, match="is also an input; write the result to another file"):
            atomic_write(spelled, _never, force=True, inputs=[target])
        with pytest.raises(UsageError, match="is also an input"):
            atomic_write(target, _never, force=True, inputs=[spelled])
    _untouched(target, before)
    assert strays(tmp_path) == []


def test_refuses_to_overwrite_a_shard_of_an_input_directory_or_index(tmp_path: Path) -> None:
    """A sharded input is its folder: overwriting a shard (or the index) would damage it."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shard = folder / "model-00001-of-00002.safetensors"
    shard.write_bytes(OLD)
    index = folder / "model.safetensors.index.json"
    index.write_text("{}")
    before = (shard.read_bytes(), shard.stat().st_mtime_ns)
    for source in (folder, index):
        for target in (shard, index):
            with pytest.raises(UsageError, match=r"is also an input|is part of the input"):
                atomic_write(target, _never, force=True, inputs=[source])
    _untouched(shard, before)
    # A new file beside the shards is no damage.
    atomic_write(folder / "merged.safetensors", _writes(b"x"), inputs=[folder])
    assert (folder / "merged.safetensors").read_bytes() == b"x"


def test_a_failing_writer_leaves_the_target_untouched_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.pt"
    target.write_bytes(OLD)

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, broken, force=True)
    assert target.read_bytes() == OLD
    assert strays(tmp_path) == []


def test_a_file_that_appears_during_the_write_is_not_clobbered(tmp_path: Path) -> None:
    target = tmp_path / "out.pt"

    def racing(tmp: Path) -> None:
        tmp.write_bytes(NEW)
        target.write_bytes(OLD)  # someone else created it meanwhile

    with pytest.raises(UsageError, match="exists; pass --force"):
        atomic_write(target, racing)
    assert target.read_bytes() == OLD
    assert strays(tmp_path) == []


@pytest.mark.parametrize("problem", ["directory", "no-folder"])
def test_refuses_a_target_that_cannot_be_a_file(tmp_path: Path, problem: str) -> None:
    target = tmp_path / "d" if problem == "directory" else tmp_path / "missing" / "out.pt"
    if problem == "directory":
        target.mkdir()
    with pytest.raises(
        UsageError,
        match="is a directory; give a file name"
        if problem == "directory"
        else "folder .* does not exist",
    ):
        atomic_write(target, _never, force=True)


def test_the_written_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    """Temporary files are created 0600; the result must have the mode a plain open() would give it."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    target = tmp_path / "out.bin"
    atomic_write(target, _writes(b"x"))
    assert oct(target.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)
    # Over an existing file, its mode is kept.
    os.chmod(target, 0o640)
    atomic_write(target, _writes(b"y"), force=True)
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)


def _has_load() -> bool:
    return any(
        (c.name or (c.callback.__name__ if c.callback else "")) == "load"
        for c in app.registered_commands
    )


@pytest.mark.skipif(not _has_load(), reason="the load command is not in this build")
def test_load_out_never_clobbers(tmp_path: Path) -> None:
    entry = write_victim(tmp_path)
    clean = clean_checkpoint(tmp_path)
    before = (clean.read_bytes(), clean.stat().st_mtime_ns)
    result = invoke("load", entry, clean.name, "--out", clean.name, "--force", cwd=tmp_path)
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {clean.name} is also an input; write the result to another file\n"
    )
    _untouched(clean, before)
    other = tmp_path / "other.safetensors"
    other.write_bytes(OLD)
    result = invoke("load", entry, clean.name, "--out", other.name, cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {other.name} exists; pass --force to overwrite it\n"
    assert other.read_bytes() == OLD
    assert strays(tmp_path) == []
