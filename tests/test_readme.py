"""README and docs truth: every console example of README.md and docs/*.md runs, against the shipped
sample_models/, and prints what the page shows; the files they show are the shipped ones; each `--json` field
list names exactly the real keys; every relative link resolves."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import runlogs
from conftest import REPO, SAMPLES, invoke
from docpages import PAGES, README, anchors, fenced, page


def console_examples() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """("page:line", [(command, output lines)]) for each ``` block of `$ ` commands, README first."""
    found = []
    for name, text in PAGES.items():
        for line, body in fenced(text, ""):
            if not body.startswith("$ "):
                continue
            steps: list[tuple[str, list[str]]] = []
            for row in body.splitlines():
                if row.startswith("$ "):
                    steps.append((row[2:], []))
                else:
                    steps[-1][1].append(row)
            found.append((f"{name}:{line}", steps))
    return found


EXAMPLES = console_examples()


def _hostile_pickle(path: Path) -> None:
    """The Safety section's evil.pt: a torch.save whose pickle calls os.system. Made here, never shipped."""
    import os

    import torch

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("true",))

    torch.save({"weight": Evil()}, path)


def _run(command: str, root: Path) -> tuple[int, str]:
    """One `$ ` line: `cd sample_models && `, a trailing `# comment`, and `| python -c ...` understood."""
    command = re.sub(r"\s{2,}#.*$", "", command)
    cwd = root
    if command.startswith("cd sample_models && "):
        cwd, command = root / "sample_models", command.removeprefix("cd sample_models && ")
    command, _, pipe = command.partition(" | ")
    args = shlex.split(command)
    assert args[0] == "modinspect", command
    result = invoke(*args[1:], cwd=cwd)
    out = str(result.stderr) + str(result.stdout)
    if pipe:
        piped = shlex.split(pipe)
        assert piped[:2] == ["python", "-c"], pipe
        done = subprocess.run(
            [sys.executable, "-c", piped[2]],
            input=result.stdout,
            capture_output=True,
            text=True,
            check=True,
        )
        out = done.stdout
    return int(result.exit_code), out


@pytest.mark.parametrize(("line", "steps"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_readme_console_example_is_real_output(
    line: str, steps: list[tuple[str, list[str]]], tmp_path: Path
) -> None:
    shutil.copytree(
        SAMPLES, tmp_path / "sample_models", ignore=shutil.ignore_patterns("__pycache__")
    )
    _hostile_pickle(tmp_path / "evil.pt")
    runlogs.write_run(
        tmp_path / "stats.jsonl"
    )  # the report section's synthetic watch log, as it says
    if any("runs/" in command for command, _ in steps):
        # docs/report.md's two runs: the real training loop of `runlogs.write_real_run`, with and without
        # its planted lr blow-up (at step 30, and at step 38 for lr-late)
        (tmp_path / "runs").mkdir()
        runlogs.write_real_run(tmp_path / "runs" / "lr-late.jsonl", blow_up_at=38)
        runlogs.write_real_run(tmp_path / "runs" / "baseline.jsonl", blow_up_at=10**6)
        runlogs.write_real_run(tmp_path / "runs" / "lr-blowup.jsonl")
    runlogs.write_blowup_run(tmp_path / "blowup.jsonl")  # docs/report.md's second one
    code = 0
    for command, shown in steps:
        if command == "echo $?":
            assert shown == [str(code)], f"{line}: exit code"
            continue
        code, out = _run(command, tmp_path)
        real = out.splitlines()
        if "…" not in shown:
            assert real == shown, f"{line}: {command}"
            continue
        at = 0  # '…' stands for lines left out: every line shown is a real line, in order
        for wanted in (s for s in shown if s != "…"):
            assert wanted in real[at:], f"{line}: {command}: {wanted!r}"
            at = real.index(wanted, at) + 1


def test_every_console_example_runs_against_shipped_files() -> None:
    commands = [c for _, steps in EXAMPLES for c, _ in steps if c != "echo $?"]
    pages = {where.split(":")[0] for where, _ in EXAMPLES}
    commands_pages = {f"docs/{c}.md" for c in ("tree", "stats", "diff", "load", "report", "doctor")}
    assert {"README.md", "docs/json.md", "docs/security.md"} | commands_pages <= pages
    for command in commands:
        command = re.sub(r"--out \S+", "", command)  # what an example writes is not an input
        names = re.findall(r"[\w./-]+\.(?:pt|pth|py|safetensors|gguf)\b", command)
        for name in names:
            if name != "evil.pt":  # the one hostile file is made by the test, not shipped
                assert (SAMPLES / Path(name).name).exists() or (REPO / name).exists(), (
                    command,
                    name,
                )


def test_the_readme_tree_is_the_golden() -> None:
    """The opening example and the golden the renderer tests keep are one output."""
    block = README.split("$ modinspect tree sample_models/tiny_lm.pth\n", 1)[1].split("```", 1)[0]
    result = invoke("tree", "tiny_lm.pth", cwd=SAMPLES)
    golden = (REPO / "tests" / "golden" / "tree_tiny_lm_pth.txt").read_text(encoding="utf-8")
    assert result.stdout == golden
    assert block == golden.replace("tiny_lm.pth  (", "sample_models/tiny_lm.pth  (", 1)


def test_readme_files_are_the_shipped_files() -> None:
    code = page("docs/stats.md").split("```python\n# faulty.py\n", 1)[1].split("```", 1)[0]
    assert code == (SAMPLES / "faulty.py").read_text(encoding="utf-8")
    toml = page("docs/sources.md").split("```toml\n# pyproject.toml\n", 1)[1].split("```", 1)[0]
    shown = tomllib.loads(toml)["tool"]["modinspect"]
    shipped = tomllib.loads((SAMPLES / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "modinspect"
    ]
    assert shown == shipped


def test_stats_works_out_of_the_box_in_sample_models() -> None:
    result = invoke("stats", cwd=SAMPLES)
    assert result.exit_code == 0, result.stderr
    assert "inputs: random (2, 3, 32, 32) float32" in result.stdout
    assert "Every activation and gradient was finite." in result.stdout


# ------------------------------------------------------------------ JSON field lists


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _section(command: str) -> str:
    """The command's docs page, which holds its `--json` field list."""
    return page(f"docs/{command}.md")


def _readme_fields(command: str) -> set[str]:
    """Every `name` in the section's JSON field list (the tree table, or the '`--json` fields:' paragraph)."""
    section = _section(command)
    if command == "tree":
        text = section.split("`--json` prints a stable document", 1)[1].split("\n\n", 2)[1]
    else:
        text = section.split("`--json` fields:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", text))


def _json(*args: str) -> dict[str, Any]:
    result = invoke(*args, "--json", cwd=SAMPLES)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def _real_documents(command: str, tmp_path: Path) -> list[dict[str, Any]]:
    if command == "tree":
        return [
            _json(
                "tree",
                "models.py:small_cnn",
                "--weights",
                "small_cnn.safetensors",
                "--input-shape",
                "1,3,8,8",
            ),
            _json("tree", "training_checkpoint.pt"),
        ]
    if command == "stats":
        return [_json("stats", "faulty.py:Net", "--input-shape", "8,16")]
    if command == "doctor":
        return [_json("doctor", "mistakes.py:Net", "--input-shape", "8,16")]
    if command == "diff":
        import torch

        sd = torch.load(SAMPLES / "small_cnn.pth", weights_only=True)
        other = {k: v.clone() for k, v in sd.items()}
        other["features.0.weight"] = other["features.0.weight"].double()
        other["classifier.bias"] = torch.zeros(3)
        other["features.0.bias"] += 1e-7
        del other["features.1.weight"]
        other["extra"] = torch.zeros(1)
        other["classifier.weight"] += 1.0
        torch.save(other, tmp_path / "other.pth")
        from modinspect.render.jsonout import diff_document
        from modinspect.reports import QuantError, QuantModuleError
        from test_widths import _long_diff

        synthetic = replace(
            _long_diff(),
            aliased=(("lm_head.weight", "embed.weight"),),
            dequantized="b",
            quantization=(QuantError("h.0.w", "Q4_K", 4.5, 8, 0.08, 0.997, 22.0),),
            quant_modules=(QuantModuleError("h.0", 1, ("Q4_K",), 4.5, 0.08, 0.997, 22.0),),
        )  # lists files leave empty
        return [
            _json("diff", "small_cnn.pth", str(tmp_path / "other.pth")),
            diff_document(synthetic),
        ]
    import torch

    half = {
        k: v.half() if v.is_floating_point() else v
        for k, v in torch.load(SAMPLES / "small_cnn.pth", weights_only=True).items()
    }
    torch.save(half, tmp_path / "half.pth")
    from modinspect.render.jsonout import load_document
    from modinspect.reports import Alias, LoadPlan, LoadReport

    plan = LoadPlan(
        loaded=("embed.weight",),
        cast=(),
        mismatched=(),
        missing=(),
        unexpected=(),
        tied=(Alias("lm_head.weight", "embed.weight"),),
        sources=(("embed.weight", "wte.weight"),),
    )
    synthetic_load = LoadReport(
        model="m.py:lm",
        checkpoint="c.pt",
        plan=plan,
        strict=False,
        skip_mismatched=False,
        performed=True,
        dry_run=False,
        written=None,
    )  # the lists the sample files leave empty
    return [
        _json("load", "heads.py:five", "small_cnn.pth", "--skip-mismatched", "--dry-run"),
        _json("load", "models.py:small_cnn", str(tmp_path / "half.pth")),
        load_document(synthetic_load),
    ]


# Words in the field lists that are values, not keys: formats, kinds, phases, causes.
VALUES = {
    "tree": {
        "safetensors",
        "pickle",
        "torchscript",
        "dcp",
        "entrypoint",
        "gguf",
        "parameter",
        "buffer",
        "unknown",
    },
    "stats": {
        "forward",
        "backward",
        "produced",
        "input",
        "loss",
        "weight",
        "overflow",
        "sum",
        "mean",
    },
    "diff": set(),
    "load": set(),
    "doctor": {"error", "warning", "info", "module", "checkpoint"},
}
ENVELOPE = {"schema_version", "modinspect_version"}


@pytest.mark.parametrize("command", ["tree", "stats", "diff", "load", "doctor"])
def test_readme_json_field_list_is_the_real_document(command: str, tmp_path: Path) -> None:
    real = set().union(*(_keys(doc) for doc in _real_documents(command, tmp_path))) - ENVELOPE
    documented = _readme_fields(command)
    assert sorted(real - documented) == [], f"{command}: keys the docs' field list leaves out"
    assert sorted(documented - real - VALUES[command]) == [], (
        f"{command}: documented fields the document lacks"
    )


def test_docs_document_the_envelope() -> None:
    for key in ENVELOPE:
        assert f"`{key}`" in page("docs/json.md"), key


# ------------------------------------------------------------------ links


LINKED = {**PAGES, "CONTRIBUTING.md": (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")}


def _links(text: str) -> list[str]:
    """The targets of a page's markdown links, code blocks and code spans left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("name", sorted(LINKED))
def test_every_relative_link_resolves(name: str) -> None:
    """mkdocs build --strict checks the links between docs pages; this also checks the README's and
    CONTRIBUTING's, which MkDocs does not build, without needing mkdocs."""
    broken = []
    for target in _links(LINKED[name]):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL: not fetched
        path, _, anchor = target.partition("#")
        file = (REPO / name).parent / path if path else REPO / name
        missing = not file.resolve().is_relative_to(REPO) or not file.exists()
        if missing or (
            anchor and file.suffix == ".md" and anchor not in anchors(file.read_text("utf-8"))
        ):
            broken.append(target)
    assert broken == [], f"{name}: broken links"


def test_docs_links_stay_inside_docs_and_every_page_is_in_the_nav() -> None:
    """MkDocs builds docs/ only: a link out of it breaks the site, and a page not in the nav is unreachable."""
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for name, text in PAGES.items():
        if name.startswith("docs/"):
            assert re.search(rf":\s+{re.escape(name.removeprefix('docs/'))}$", nav, re.MULTILINE), (
                name
            )
            outside = [t for t in _links(text) if t.startswith("..") or t.startswith("/")]
            assert outside == [], name


def test_the_link_check_finds_a_broken_link() -> None:
    assert _links("see [a](docs/a.md#b) and `[c](d.md)`\n```\n[e](f.md)\n```\n") == ["docs/a.md#b"]
