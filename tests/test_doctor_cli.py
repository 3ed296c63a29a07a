"""`modinspect doctor` through the CLI runner: exit codes, exact lines, --json, --sarif (against the schema)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO, invoke
from modinspect.render.jsonout import SCHEMA_VERSION
from modinspect.reports.doctor import CATALOG

SCHEMAS = REPO / "tests" / "schemas"

THREE_MISTAKES = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small classifier with three classic mistakes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.blocks = [nn.Linear(32, 32) for _ in range(2)]  # a plain list: never trained, never saved
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 10)  # defined, never used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        for block in self.blocks:
            h = torch.relu(block(h))
        return torch.softmax(self.head(h), dim=-1)  # probabilities into CrossEntropyLoss


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x)))


class Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None


class Dann(Clean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(Reverse.apply(torch.relu(self.embed(x)), 0.1))


def build() -> Net:
    return Net()


def clean() -> Clean:
    return Clean()


def dann() -> Dann:
    return Dann()
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    (tmp_path / "three.py").write_text(textwrap.dedent(THREE_MISTAKES))
    return tmp_path


def doctor(*args: str, cwd: Path) -> Any:
    return invoke("doctor", *args, cwd=cwd)


def test_three_mistakes_exit_1_with_the_exact_report(models: Path) -> None:
    result = doctor("three.py:build", "-s", "8,16", cwd=models)
    assert result.exit_code == 1
    assert result.stdout == textwrap.dedent("""\
        doctor: three.py:build (training), input random (8, 16) float32 × 1 batch(es), seed 0

        error (1)
          unregistered-container  <root>.blocks
              <root>.blocks is a plain list holding 2 module(s) with parameters, buffers or a mode: parameters(), state_dict(),
              .to() and the optimizer do not see them
              fix: use nn.ModuleList

        warnings (3)
          probabilities-into-cross-entropy  <root>
              the model's output (8, 10) is probabilities (rows sum to 1, from a softmax): nn.CrossEntropyLoss expects logits
              and would apply softmax twice
              fix: return the logits and let CrossEntropyLoss apply the softmax; apply softmax only at inference
          unused-parameter  aux.weight, aux.bias
              no gradient after backward: its module never ran; DistributedDataParallel would stop with 'parameters that were
              not used in producing loss'
              fix: remove the unused module, use its output, freeze it (requires_grad_(False)), or pass
              find_unused_parameters=True to DistributedDataParallel

        1 error, 3 warnings, 0 infos from 18 checks
        """)


def test_clean_model_exits_0(models: Path) -> None:
    result = doctor("three.py:clean", "-s", "8,16", cwd=models)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "no findings from 18 checks"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((), 1),
        (("--fail-on", "warning"), 1),
        (("--fail-on", "error"), 1),
        (("--fail-on", "error", "--ignore", "unregistered-container"), 0),
        (("--select", "unused-parameter"), 1),
        (("--select", "unused-parameter", "--fail-on", "error"), 0),
        (
            (
                "--ignore",
                "unused-parameter",
                "--ignore",
                "probabilities-into-cross-entropy",
                "--ignore",
                "unregistered-container",
            ),
            0,
        ),
    ],
)
def test_fail_on_select_ignore_set_the_exit_code(
    models: Path, args: tuple[str, ...], code: int
) -> None:
    assert doctor("three.py:build", "-s", "8,16", *args, cwd=models).exit_code == code


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("three.py:build", "-s", "8,16", "--fail-on", "info"),
            "error: --fail-on 'info' is not warning or error",
        ),
        (
            ("three.py:build", "-s", "8,16", "--select", "nope"),
            "error: --select 'nope' is not a doctor check; `modinspect doctor --explain list` lists them",
        ),
        (
            ("three.py:build", "-s", "8,16", "--ignore", "unused"),
            "error: --ignore 'unused' is not a doctor check; `modinspect doctor --explain list` lists them",
        ),
        (
            ("three.py:dann", "-s", "8,16", "--expect", "Reverse"),
            "error: --expect 'Reverse' is not NAME=MULTIPLE, e.g. --expect GradReverse=-0.1",
        ),
        (
            ("three.py:dann", "-s", "8,16", "--expect", "Reverse=abc"),
            "error: --expect 'Reverse=abc' is not NAME=MULTIPLE, e.g. --expect GradReverse=-0.1",
        ),
        (
            ("three.py:build", "-s", "8,16", "--json", "--sarif"),
            "error: --json and --sarif are two outputs: pick one",
        ),
        (
            ("three.py:build", "-s", "8,16", "--context", "eval"),
            "error: --context 'eval' is not training or inference",
        ),
        (
            ("three.py:build", "-s", "8,17"),
            "error: the model's forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x17 and 16x32)",
        ),
        (
            ("--explain", "nope"),
            "error: --explain 'nope' is not a doctor check; --explain list lists them",
        ),
        (("missing.safetensors",), "error: missing.safetensors does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    models: Path, args: tuple[str, ...], line: str
) -> None:
    result = doctor(*args, cwd=models)
    assert result.exit_code == 2
    assert result.stderr == line + "\n"
    assert result.stdout == ""


def test_expect_silences_the_declared_reversal(models: Path) -> None:
    loud = doctor("three.py:dann", "-s", "8,16", "--json", cwd=models)
    assert loud.exit_code == 1
    (found,) = json.loads(loud.stdout)["findings"]
    assert (found["id"], found["severity"], found["function"]) == (
        "autograd-function-wrong-backward",
        "error",
        "Reverse",
    )
    assert found["message"].startswith("Reverse.backward returns -0.1 × the true gradient")
    quiet = doctor("three.py:dann", "-s", "8,16", "--expect", "Reverse=-0.1", cwd=models)
    assert quiet.exit_code == 0
    assert (
        "note: Reverse: backward returns -0.1 × the true gradient, as declared (--expect)"
        in quiet.stdout
    )


def test_explain(models: Path) -> None:
    result = doctor("--explain", "module-created-in-forward", cwd=models)
    assert result.exit_code == 0
    assert result.stdout.startswith(
        "module-created-in-forward: a module or Parameter built inside forward(), new on "
        "every call\n\nA layer built inside forward()"
    )
    assert result.stdout.rstrip().endswith(
        "Fix: build the module once in __init__ and call it in forward"
    )
    listed = doctor("--explain", "list", cwd=models).stdout.splitlines()
    assert [line.split()[0] for line in listed] == list(CATALOG)


def test_json_document(models: Path) -> None:
    result = doctor("three.py:build", "-s", "8,16", "--json", cwd=models)
    doc = json.loads(result.stdout)
    assert doc["schema"] == "modinspect.doctor/1" and doc["schema_version"] == SCHEMA_VERSION
    assert doc["counts"] == {"error": 1, "warning": 3, "info": 0}
    assert [(f["id"], f["key"]) for f in doc["findings"]] == [
        ("unregistered-container", "blocks"),
        ("probabilities-into-cross-entropy", ""),
        ("unused-parameter", "aux.weight"),
        ("unused-parameter", "aux.bias"),
    ]
    assert [f["detail"] for f in doc["findings"]][2:] == ["never-ran", "never-ran"]
    assert set(doc["findings"][0]) == {
        "id",
        "severity",
        "module",
        "attribute",
        "function",
        "file",
        "line",
        "key",
        "message",
        "fix",
        "detail",
    }
    assert len(doc["checks"]) == 18 and doc["notes"] == []


def test_checkpoint_without_code(tmp_path: Path) -> None:
    sd = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.randn(4)}
    sd["fc.weight"][1, 2] = float("nan")
    save_file(sd, str(tmp_path / "ckpt.safetensors"))
    result = doctor("ckpt.safetensors", cwd=tmp_path)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:4] == [
        "doctor: ckpt.safetensors (checkpoint without code: stored values only)",
        "",
        "error (1)",
        "  nonfinite-weights  fc.weight",
    ]
    result = doctor("ckpt.safetensors", "-s", "2,8", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: ckpt.safetensors is a checkpoint without code: doctor checks its stored values "
        "and runs nothing, so --input/--input-shape do not apply\n"
    )


def test_model_without_input_runs_the_static_checks(models: Path) -> None:
    result = doctor("three.py:build", cwd=models)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "doctor: three.py:build (training), no input: static checks only"
    assert "  unregistered-container  <root>.blocks" in lines
    assert "unused-parameter" not in result.stdout
    assert (
        "note: no example input: the forward/backward checks did not run (pass example_inputs, --input-shape "
        "or --input, or set example_input_array)"
    ) in result.stdout.replace("\n", " ").replace("  ", " ")


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    sd = {"bad\x1b[31mname.weight": torch.full((4, 8), 0.5)}
    torch.save(sd, tmp_path / "x.pt")
    result = doctor("x.pt", cwd=tmp_path)
    assert "\x1b" not in result.stdout and "bad\\x1b[31mname.weight" in result.stdout


# ---------------------------------------------------------------- SARIF


def _sarif(models: Path, *args: str) -> dict[str, Any]:
    result = doctor(*args, "--sarif", cwd=models)
    assert result.exit_code in (0, 1)
    return json.loads(result.stdout)


def check_sarif_structure(log: dict[str, Any]) -> None:
    """SARIF 2.1.0's required structure, checked by hand (the schema test needs jsonschema)."""
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "modinspect doctor"
    rules = driver["rules"]
    assert len({r["id"] for r in rules}) == len(rules)
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note") and result["message"]["text"]
        for location in result["locations"]:
            assert location["logicalLocations"][0]["fullyQualifiedName"]
            physical = location.get("physicalLocation")
            if physical:
                assert physical["artifactLocation"]["uri"]
                assert physical.get("region", {"startLine": 1})["startLine"] >= 1


def test_sarif_has_a_result_per_finding(models: Path) -> None:
    log = _sarif(models, "three.py:build", "-s", "8,16")
    check_sarif_structure(log)
    results = log["runs"][0]["results"]
    assert [
        (r["ruleId"], r["level"], r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"])
        for r in results
    ] == [
        ("unregistered-container", "error", "blocks"),
        ("probabilities-into-cross-entropy", "warning", "<root>"),
        ("unused-parameter", "warning", "aux.weight"),
        ("unused-parameter", "warning", "aux.bias"),
    ]


def test_sarif_points_at_source_lines_and_checkpoints(models: Path, tmp_path: Path) -> None:
    (models / "twice.py").write_text(
        textwrap.dedent("""
        from torch import nn

        class Twice(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = nn.Linear(4, 4)
                self.block = nn.Linear(4, 4)

            def forward(self, x):
                return self.block(x)
        """)
    )
    log = _sarif(models, "twice.py:Twice", "-s", "2,4")
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "module-assigned-twice"
    assert result["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "twice.py"},
        "region": {"startLine": 8},
    }
    save_file({"w.weight": torch.zeros(3, 3)}, str(models / "z.safetensors"))
    log = _sarif(models, "z.safetensors")
    (result,) = log["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "z.safetensors"}
    }
    check_sarif_structure(log)


def test_sarif_validates_against_the_oasis_schema(models: Path) -> None:
    jsonschema = pytest.importorskip(
        "jsonschema"
    )  # in the test extra; the structure test runs without it
    schema = json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft4Validator(schema)
    for args in (
        ("three.py:build", "-s", "8,16"),
        ("three.py:clean", "-s", "8,16"),
        ("three.py:dann", "-s", "8,16"),
    ):
        log = _sarif(models, *args)
        errors = sorted(validator.iter_errors(log), key=str)
        assert not errors, errors[0]
    bad = _sarif(models, "three.py:build", "-s", "8,16")
    del bad["runs"][0]["tool"]["driver"]["name"]
    assert list(validator.iter_errors(bad))  # the validator does reject a broken log


def test_model_and_input_from_tool_modinspect() -> None:
    from conftest import SAMPLES

    result = doctor(cwd=SAMPLES)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "doctor: models.py:small_cnn (inference), input random (2, 3, 32, 32) float32 × 1 batch(es), seed 0",
        "",
        "no findings from 18 checks",
    ]
    assert result.stderr.startswith(
        "note: importing models.py:small_cnn, the model [tool.modinspect] names in "
    )


def test_input_file_and_context(models: Path) -> None:
    torch.save(torch.randn(8, 16), models / "batch.pt")
    result = doctor(
        "three.py:build", "--input", "batch.pt", "--context", "inference", "--json", cwd=models
    )
    doc = json.loads(result.stdout)
    assert doc["inputs"] == "batch.pt: (8, 16) float32" and doc["context"] == "inference"
    # at inference a softmax output is what one wants to read: an info, not a warning
    (probs,) = [f for f in doc["findings"] if f["id"] == "probabilities-into-cross-entropy"]
    assert probs["severity"] == "info"


def test_hugging_face_directory_and_its_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    result = doctor("gpt2", "-s", "2,8", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "doctor: gpt2 (inference), input random (2, 8) int64 × 1 batch(es), seed 0",
        "",
        "no findings from 18 checks",
    ]
    result = doctor("gpt2/model.safetensors", cwd=tmp_path)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "no findings from 6 checks"
