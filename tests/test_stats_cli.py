"""`modinspect stats` through the CLI: inputs, exit codes 0/1/2, JSON fields, error lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SAMPLES, invoke

FAULTY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class SqrtShift(nn.Module):
        def forward(self, x):
            return torch.sqrt(x - 10.0)

    class Block(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.act = act

        def forward(self, x):
            return self.act(self.fc(x))

    class Net(nn.Module):
        def __init__(self, faulty=True):
            super().__init__()
            torch.manual_seed(0)
            acts = [nn.ReLU(), nn.ReLU(), SqrtShift() if faulty else nn.ReLU(), nn.ReLU()]
            self.blocks = nn.Sequential(*[Block(a) for a in acts])
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.blocks(x))

    def faulty():
        return Net(True)

    def clean():
        return Net(False)

    class WithExample(Net):
        def __init__(self):
            super().__init__(False)
            self.example_input_array = torch.ones(3, 8)

    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, scale):
            return self.fc(x) * scale

    def first_output(out):
        return out[:, 0].sum()
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(FAULTY)
    return tmp_path


def stats_json(*args: str, cwd: Path) -> tuple[int, dict[str, Any], str]:
    result = invoke("stats", *args, "--json", cwd=cwd)
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, doc, result.stderr


def test_clean_model_exits_0_with_the_documented_fields(project: Path) -> None:
    code, doc, err = stats_json(
        "nets.py:clean", "--input-shape", "4,8", "--device", "cpu", cwd=project
    )
    assert (code, err) == (0, "")
    assert doc["nonfinite_origin"] is None
    names = [m["name"] for m in doc["modules"]]
    assert names[:4] == ["", "blocks", "blocks.0", "blocks.0.fc"]  # execution order
    required = {
        "name",
        "type",
        "calls",
        "mean",
        "std",
        "min",
        "max",
        "zero_fraction",
        "nan",
        "inf",
        "dead_fraction",
        "grad_norm",
    }
    assert all(required <= set(m) for m in doc["modules"])
    act = next(m for m in doc["modules"] if m["name"] == "blocks.0.act")
    assert act["type"] == "ReLU" and act["dead_fraction"] is not None and act["calls"] == 1
    assert next(m for m in doc["modules"] if m["name"] == "blocks.0.fc")["dead_fraction"] is None
    assert all(m["grad_norm"] is not None for m in doc["modules"])
    assert doc["mode"] == "eval" and doc["device"] == "cpu" and doc["loss"] == "sum"


def test_faulty_model_exits_1_and_names_the_origin(project: Path) -> None:
    code, doc, _ = stats_json("nets.py:faulty", "--input-shape", "4,8", cwd=project)
    assert code == 1
    assert doc["nonfinite_origin"] == {
        "module": "blocks.2.act",
        "type": "SqrtShift",
        "phase": "forward",
        "cause": "produced",
        "passed_on": ["blocks.2", "blocks.3.fc", "blocks.3.act", "blocks.3", "blocks", "head", ""],
        "op": "aten::sqrt",
        "source": "nets.py:7",
        "code": "return torch.sqrt(x - 10.0)",
        "node": None,
        "created_at": None,
        "created_code": None,
        "tensor": None,
        "detail": None,
        "rank": None,
    }
    assert doc["backward_origin"] is None
    text = invoke("stats", "nets.py:faulty", "--input-shape", "4,8", cwd=project)
    assert text.exit_code == 1
    assert (
        "First NaN/Inf produced in forward by aten::sqrt in blocks.2.act (SqrtShift); passed on by blocks.2, "
        "blocks.3.fc, blocks.3.act, blocks.3, blocks, head, (model)"
    ) in " ".join(text.stdout.split())
    assert "  at nets.py:7  return torch.sqrt(x - 10.0)\n" in text.stdout


def test_no_backward_has_null_gradients(project: Path) -> None:
    code, doc, _ = stats_json("nets.py:clean", "--input-shape", "4,8", "--no-backward", cwd=project)
    assert code == 0 and doc["backward"] is False
    assert all(m["grad_norm"] is None for m in doc["modules"])


def test_batches_and_train_mode(project: Path) -> None:
    code, doc, _ = stats_json(
        "nets.py:clean", "--input-shape", "4,8", "--batches", "3", "--train", cwd=project
    )
    assert code == 0 and doc["batches"] == 3 and doc["mode"] == "train"
    assert all(m["calls"] == 3 for m in doc["modules"])


def test_input_files(project: Path) -> None:
    torch.save(torch.randn(2, 8), project / "x.pt")
    code, doc, _ = stats_json("nets.py:clean", "--input", "x.pt", cwd=project)
    assert code == 0 and doc["inputs"] == "x.pt: (2, 8) float32"
    from safetensors.torch import save_file

    save_file({"x": torch.randn(3, 4), "scale": torch.tensor(2.0)}, str(project / "kw.safetensors"))
    code, doc, err = stats_json("nets.py:Kw", "--input", "kw.safetensors", cwd=project)
    assert (code, err) == (0, "")
    assert doc["inputs"] == "kw.safetensors: scale=() float32, x=(3, 4) float32"


def test_unsafe_input_file_is_refused_and_not_run(project: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            import os

            return (os.system, (f"touch {project / 'PWNED'}",))

    torch.save({"x": Payload()}, project / "evil.pt")
    result = invoke("stats", "nets.py:clean", "--input", "evil.pt", cwd=project)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: evil.pt needs 'posix.system' to unpickle")
    assert not (project / "PWNED").exists()


def test_example_input_array_and_custom_loss(project: Path) -> None:
    code, doc, _ = stats_json("nets.py:WithExample", cwd=project)
    assert code == 0 and doc["inputs"] == "example_input_array: (3, 8) float32"
    code, doc, _ = stats_json(
        "nets.py:clean", "--input-shape", "4,8", "--loss", "nets.py:first_output", cwd=project
    )
    assert code == 0 and doc["loss"] == "custom"
    head = next(m for m in doc["modules"] if m["name"] == "head")
    assert head["grad_norm"] == pytest.approx(
        2.0
    )  # d/d out of out[:, 0].sum() is 1 on 4 of 8 elements


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["small.pth", "--input-shape", "2,8"],
            "error: small.pth is a checkpoint without a model; stats needs one: pair it with an entry point, "
            "e.g. modinspect stats models.py:build --weights small.pth\n",
        ),
        (
            ["nets.py:clean"],
            "error: stats needs an input: pass --input FILE or --input-shape 2,16 (repeatable), set "
            "example_input_array on the model, or add input_shape to [tool.modinspect]\n",
        ),
        (
            ["nets.py:clean", "--input-shape", "4,x"],
            "error: --input-shape '4,x' is not a list of integers like 2,16\n",
        ),
        (
            ["nets.py:clean", "--input-shape", "4,8", "--dtype", "int8"],
            "error: --dtype 'int8' is not float32, bfloat16 or float16\n",
        ),
        (
            ["nets.py:clean", "--input-shape", "4,9"],
            "error: the model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x9 and 8x8) in "
            "blocks.0.fc (Linear)\n",
        ),
        (
            ["nets.py:clean", "--input-shape", "4,8", "--loss", "max"],
            "error: --loss 'max' is not auto, sum, mean or file.py:FUNCTION\n",
        ),
        (
            ["nets.py:clean", "--input-shape", "4,8", "--filter", "zzz*"],
            "error: --filter 'zzz*' matches no module\n",
        ),
    ],
)
def test_stats_user_errors(project: Path, args: list[str], message: str) -> None:
    torch.save({"w": torch.zeros(2)}, project / "small.pth")
    result = invoke("stats", *args, cwd=project)
    assert (result.exit_code, result.stderr) == (2, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(project: Path) -> None:
    result = invoke(
        "stats", "nets.py:clean", "--input-shape", "4,8", "--device", "cuda", cwd=project
    )
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --device cuda: no CUDA device is available to this torch (a CPU build, or no GPU)\n",
    )


def test_project_defaults_drive_a_bare_stats(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "nets.py:faulty"\ninput_shape = "2,8"\n'
    )
    sub = project / "deeper"
    sub.mkdir()
    code, doc, _ = stats_json(cwd=sub)
    assert code == 1 and doc["nonfinite_origin"]["module"] == "blocks.2.act"


def test_project_dtype_runs_under_autocast_as_the_dtype_option_does(project: Path) -> None:
    """[tool.modinspect] dtype is --dtype's default when the model comes from there: same run, same JSON."""
    (project / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "nets.py:clean"\ninput_shape = [4, 8]\ndtype = "bfloat16"\n'
    )
    code, configured, err = stats_json("--device", "cpu", cwd=project)
    assert (code, err) == (
        0,
        "note: importing nets.py:clean, the model [tool.modinspect] names in "
        f"{project.resolve() / 'pyproject.toml'}\n",
    )
    code, option, err = stats_json(
        "nets.py:clean",
        "--input-shape",
        "4,8",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        cwd=project,
    )
    assert (code, err) == (0, "")
    code, plain, _ = stats_json(
        "nets.py:clean", "--input-shape", "4,8", "--device", "cpu", cwd=project
    )
    assert code == 0
    assert configured["dtype"] == option["dtype"] == "bfloat16" and plain["dtype"] is None
    assert configured["modules"] == option["modules"]
    # Autocast took effect: a Linear's output is rounded to bfloat16, so its statistics move.
    fc = next(m for m in configured["modules"] if m["name"] == "blocks.0.fc")
    fc32 = next(m for m in plain["modules"] if m["name"] == "blocks.0.fc")
    assert fc["mean"] != fc32["mean"]
    # The option still wins over the table.
    code, explicit, _ = stats_json("--device", "cpu", "--dtype", "float32", cwd=project)
    assert code == 0 and explicit["dtype"] is None and explicit["modules"] == plain["modules"]


def test_project_dtype_must_be_one_of_the_dtypes(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "nets.py:clean"\ninput_shape = [4, 8]\ndtype = "int8"\n'
    )
    result = invoke("stats", cwd=project)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: [tool.modinspect] dtype = 'int8' is not float32, bfloat16 or float16\n",
    )


def test_sample_cnn_with_inplace_relus() -> None:
    code, doc, err = stats_json("models.py:small_cnn", "--input-shape", "2,3,8,8", cwd=SAMPLES)
    assert (code, err) == (0, "")
    relus = [m for m in doc["modules"] if m["type"] == "ReLU"]
    assert len(relus) == 2 and all(m["units"] in (8, 16) for m in relus)
    assert all(m["grad_norm"] and m["grad_norm"] > 0 for m in relus)


def test_gpt2_from_config_with_token_ids(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "gpt.py").write_text(
        textwrap.dedent(
            """
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        def build():
            torch.manual_seed(0)
            return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=64))
        """
        )
    )
    code, doc, err = stats_json("gpt.py:build", "--input-shape", "2,16", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert doc["inputs"].startswith("random (2, 16) int64")
    rows = {m["name"]: m for m in doc["modules"]}
    assert rows["transformer.h.0.attn"]["calls"] == 1
    assert rows["lm_head"]["count"] == 2 * 16 * 99
    assert rows["transformer.wte"]["grad_norm"] > 0
    assert doc["nonfinite_origin"] is None


def test_torchscript_is_refused_with_advice() -> None:
    result = invoke("stats", "small_cnn_scripted.pt", "--input-shape", "2,3,8,8", cwd=SAMPLES)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: small_cnn_scripted.pt is TorchScript, whose modules take no Python hooks; run stats on the Python "
        "model instead, e.g. an entry point with --weights small_cnn_scripted.pt\n",
    )
