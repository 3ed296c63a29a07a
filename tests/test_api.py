"""The Python API: the README's and docs pages' examples run as written, and each public function does what the
CLI does."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
from pathlib import Path

import pytest
import torch

import modinspect
from conftest import REPO, SAMPLES, live
from docpages import PAGES, fenced
from models import Tied, TwoLayer
from modinspect.errors import UsageError


def _api_examples() -> list[tuple[str, str]]:
    """("page:line", code) of every ```python block of README.md and docs/*.md but the shipped files shown."""
    return [
        (f"{name}:{line}", code)
        for name, text in PAGES.items()
        for line, code in fenced(text, "python")
        if not re.match(r"# \w+\.py\n", code)  # a sample_models/ file, compared in test_readme.py
    ]


EXAMPLES = _api_examples()


def _printed(code: str) -> list[str]:
    """What an example prints: each print's trailing comment; under a `modinspect.show(` line, its `#` lines."""
    lines = code.splitlines()
    out = []
    for at, line in enumerate(lines):
        if "print(" in line and "# " in line.split("print(", 1)[1]:
            out.append(line.split("# ", 1)[1].strip())
        elif line.startswith("modinspect.show("):
            shown = itertools.takewhile(lambda s: s.startswith("#"), lines[at + 1 :])
            out += [s.removeprefix("#").removeprefix(" ") for s in shown]
    return out


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_readme_examples_print_what_their_comments_say(where: str, code: str) -> None:
    expected = _printed(code)
    out = io.StringIO()
    old = Path.cwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, where, "exec"), {})
    finally:
        os.chdir(old)
    assert out.getvalue().splitlines() == expected


def test_public_names_are_importable_lazily() -> None:
    for name in modinspect.__all__:
        assert getattr(modinspect, name) is not None
    with pytest.raises(AttributeError):
        modinspect.no_such_thing  # noqa: B018


def test_open_source_takes_a_live_module_and_counts_tied_weights_once() -> None:
    model = Tied()
    src = modinspect.open_source(model)
    assert src.module is model and src.format == "module"
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert modinspect.build_tree(src).totals.params == sum(unique.values())


def test_open_source_refuses_what_is_not_a_source() -> None:
    with pytest.raises(
        UsageError, match=r"^open_source takes a path, an entry point or an nn\.Module, not a int$"
    ):
        modinspect.open_source(42)  # type: ignore[arg-type]  # the wrong type is the point


def test_perform_load_writes_and_reports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = TwoLayer()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = modinspect.open_source(TwoLayer())
    with modinspect.open_source(tmp_path / "w.pt") as ckpt:
        report = modinspect.perform_load(model, ckpt, strict=True, out=tmp_path / "out.safetensors")
    assert report.performed and report.written == str(tmp_path / "out.safetensors")
    assert report.plan.missing == () and report.plan.unexpected == ()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(live(model).state_dict()[name], tensor), name
    with (
        pytest.raises(UsageError, match="exists"),
        modinspect.open_source(tmp_path / "w.pt") as ckpt,
    ):
        modinspect.perform_load(model, ckpt, out=tmp_path / "out.safetensors")


def test_diff_sources_matches_the_cli(tmp_path: Path) -> None:
    with (
        modinspect.open_source(SAMPLES / "small_cnn.pth") as a,
        modinspect.open_source(SAMPLES / "small_cnn.safetensors") as b,
    ):
        report = modinspect.diff_sources(a, b)
    assert not report.differs and report.identical == len(a.tensors)


def test_run_stats_is_what_the_stats_command_prints() -> None:
    """The CLI is a shell over run_stats: the same request gives the same document, value for value."""
    import json

    from conftest import invoke
    from modinspect.commands.stats import StatsRequest
    from modinspect.render.jsonout import stats_document

    entry = str(SAMPLES / "models.py:small_cnn")
    request = StatsRequest(
        source=entry, input_shapes=((2, 3, 16, 16),), device="cpu", seed=5, train=True
    )
    report = modinspect.run_stats(request)
    result = invoke(
        "stats",
        entry,
        "--input-shape",
        "2,3,16,16",
        "--device",
        "cpu",
        "--seed",
        "5",
        "--train",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    ours = json.loads(json.dumps(stats_document(report)))
    assert ours == printed
    assert report.mode == "train" and report.batches == 1 and len(report.modules) > 5


def test_run_stats_refuses_a_bad_dtype_before_opening_anything(tmp_path: Path) -> None:
    from modinspect.commands.stats import StatsRequest

    with pytest.raises(UsageError, match=r"^--dtype 'int8' is not float32, bfloat16 or float16$"):
        modinspect.run_stats(StatsRequest(source=str(tmp_path / "missing.py:build"), dtype="int8"))


def test_run_load_is_what_the_load_command_prints(tmp_path: Path) -> None:
    import json

    from conftest import invoke
    from modinspect.commands.load import LoadRequest, run_load
    from modinspect.render.jsonout import load_document

    entry, ckpt = str(SAMPLES / "models.py:small_cnn"), str(SAMPLES / "ddp.pt")
    from modinspect.names import KeyMap

    warned: list[list[str]] = []
    report = run_load(
        LoadRequest(
            checkpoint=ckpt,
            model=entry,
            keymap=KeyMap(strip_prefixes=("module.",)),
            strict=True,
            out=tmp_path / "init.safetensors",
        ),
        warn=warned.append,
    )
    assert report.performed and len(report.plan.loaded) == 16 and not report.plan.missing
    assert report.written == str(tmp_path / "init.safetensors") and warned == [[]]
    result = invoke(
        "load", entry, ckpt, "--strip-prefix", "module.", "--strict", "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    planned = run_load(
        LoadRequest(
            checkpoint=ckpt,
            model=entry,
            keymap=KeyMap(strip_prefixes=("module.",)),
            strict=True,
            dry_run=True,
        )
    )
    assert json.loads(json.dumps(load_document(planned))) == printed


def test_run_load_refuses_out_with_meta() -> None:
    from modinspect.commands.load import LoadRequest, run_load

    with pytest.raises(
        UsageError, match=r"^--out needs real weights: drop --meta \(which only plans\)$"
    ):
        run_load(LoadRequest(checkpoint="x.pt", model="m.py:build", meta=True, out="y.safetensors"))
