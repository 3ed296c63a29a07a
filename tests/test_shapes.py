"""tree --input-shape: output shapes, MACs and activation memory from a meta forward, checked against torchinfo."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import REPO, SAMPLES, Golden, invoke, live
from models import CalledTwice, ResNet18, SmallCNN, Tied
from modinspect.reports import ShapesReport
from modinspect.run.shapes import extra_reprs, measure_shapes, meta_copy


def _shapes(model: nn.Module, *inputs: torch.Tensor) -> ShapesReport:
    return measure_shapes(model, (tuple(inputs), {}))


def _by_name(report: ShapesReport) -> dict[str, Any]:
    return {m.name: m for m in report.modules}


def _torchinfo_layers(model: nn.Module, **kwargs: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """torchinfo's summary and, per dotted module name, its MACs summed over calls and first output size."""
    torchinfo = pytest.importorskip("torchinfo")
    summary = torchinfo.summary(model, verbose=0, depth=64, mode="eval", **kwargs)
    names = {id(m): n for n, m in model.named_modules()}
    layers: dict[str, dict[str, Any]] = defaultdict(lambda: {"macs": 0, "calls": 0})
    for info in summary.summary_list:
        layer = layers[names[id(info.module)]]
        layer["macs"] += info.macs
        layer["calls"] += 1
        layer.setdefault("output", list(info.output_size))
        layer["leaf"], layer["params"], layer["module"] = (
            info.is_leaf_layer,
            info.num_params,
            info.module,
        )
    return summary, dict(layers)


def _torchinfo_extra(module: nn.Module, output: list[int]) -> int:
    """What torchinfo adds to a layer's MACs beyond the multiply-adds FlopCounterMode counts.

    It charges a conv layer's bias per batch × spatial position, and a linear layer's bias and a norm layer's
    weight and bias once per sample (torchinfo's `calculate_macs`: `output_size[0] * params` for any layer whose
    class name lacks "Conv"), not per token or spatial position.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        return (
            0 if module.bias is None else module.bias.numel() * math.prod(output[:1] + output[2:])
        )
    if isinstance(module, nn.Linear):
        return 0 if module.bias is None else module.bias.numel() * output[0]
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
        return output[0] * sum(p.numel() for p in module.parameters())
    return 0


def _check_against_torchinfo(model: nn.Module, x: torch.Tensor) -> ShapesReport:
    report = _shapes(model, x)
    ours = _by_name(report)
    summary, theirs = _torchinfo_layers(model, input_data=[x])
    leaves = 0
    for name, layer in theirs.items():
        m = ours[name]
        assert list(m.output_shapes[0]) == layer["output"], name
        assert m.calls == layer["calls"], name
        if layer["leaf"]:
            leaves += 1
            assert layer["macs"] == m.macs + layer["calls"] * _torchinfo_extra(
                layer["module"], layer["output"]
            ), name
    assert leaves > 5
    extra = sum(
        t["calls"] * _torchinfo_extra(t["module"], t["output"])
        for t in theirs.values()
        if t["leaf"]
    )
    assert summary.total_mult_adds == report.totals.macs + extra
    assert report.totals.flops == 2 * report.totals.macs
    assert (
        summary.total_param_bytes == report.totals.param_bytes
    )  # no tied weights here: the same bytes
    # torchinfo sizes the input with sys.getsizeof(storage): the bytes plus the Python object's header.
    assert summary.total_input == report.totals.input_bytes + sys.getsizeof(
        torch.empty(0).untyped_storage()
    )
    # torchinfo's "forward/backward pass size": twice the outputs of the leaf layers that have parameters.
    with_params = sum(ours[n].output_bytes for n, t in theirs.items() if t["leaf"] and t["params"])
    assert summary.total_output_bytes == 2 * with_params
    return report


def test_cnn_shapes_and_macs_match_torchinfo() -> None:
    torch.manual_seed(0)
    report = _check_against_torchinfo(SmallCNN().eval(), torch.randn(2, 3, 32, 32))
    ours = _by_name(report)
    # Conv2d(3, 16, 3, padding=1) on 2×32×32: one multiply-add per weight per output position.
    assert ours["features.0"].macs == 2 * 32 * 32 * 16 * 3 * 3 * 3
    assert ours["features.0"].output_shapes == ((2, 16, 32, 32),)
    assert ours["fc"].macs == 2 * 32 * 10
    assert (
        ours[""].macs
        == report.totals.macs
        == sum(m.macs for m in report.modules if "." not in m.name and m.name)
    )


def test_torchinfo_charges_norm_layers_per_sample_not_per_token() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 8),
        nn.LayerNorm(8),
        nn.GELU(),
        nn.Linear(8, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 5, 16)  # 2 samples of 5 tokens: per sample and per position differ
    ours = _by_name(_shapes(model, x))
    _, theirs = _torchinfo_layers(model, input_data=[x])
    for name in (
        "1",
        "4",
    ):  # LayerNorm(8): its 16 parameters once per sample (2 × 16), not per token
        assert ours[name].macs == 0
        assert (
            theirs[name]["macs"]
            == _torchinfo_extra(model[int(name)], theirs[name]["output"])
            == 2 * 16
        )
    # A linear layer's bias likewise: per sample (torchinfo charges the weight per sample too, over tokens).
    assert theirs["5"]["macs"] == 2 * (8 * 4 + 4)


def test_resnet18_matches_torchinfo_and_torchvision_figures() -> None:
    torch.manual_seed(0)
    model = ResNet18().eval()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18
    report = _check_against_torchinfo(model, torch.randn(1, 3, 224, 224))
    ours = _by_name(report)
    assert (
        report.totals.macs == 1_814_073_344
    )  # torchvision lists 1.81 GFLOPS (multiply-adds) at 224×224
    assert ours["layer4.1"].output_shapes == ((1, 512, 7, 7),)
    assert ours["layer1.0.relu"].calls == 2  # one ReLU used twice in a block: both calls summed
    assert ours["layer2.0.downsample.0"].macs == 28 * 28 * 128 * 64


def test_gpt2_shapes_match_torchinfo_and_macs_the_matmuls() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    d, layers, b, t = 64, 2, 2, 16
    config = transformers.GPT2Config(
        n_layer=layers,
        n_embd=d,
        n_head=4,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2Model(config).eval()
    ids = torch.randint(0, 100, (b, t))
    report = _shapes(model, ids)
    ours = _by_name(report)
    _, theirs = _torchinfo_layers(model, input_data=[ids])
    for name, layer in theirs.items():
        if layer["output"]:  # torchinfo gives no size for a ModelOutput
            assert list(ours[name].output_shapes[0]) == layer["output"], name
    for name, m in ours.items():
        if type(model.get_submodule(name)).__name__ == "Conv1D":
            conv = model.get_submodule(name)
            fan_in, fan_out = conv.weight.shape
            assert m.macs == b * t * fan_in * fan_out, name
            # torchinfo treats Conv1D as a convolution and multiplies by batch × out_features, not by the
            # tokens: its figure is not the layer's work, so we differ on purpose.
            assert (
                theirs[name]["macs"]
                == conv.weight.numel() * b * fan_out + conv.bias.numel() * b * fan_out
            )
    # The attention core (scaled_dot_product_attention: QKᵀ and AV), which torchinfo does not count.
    core = 2 * b * t * t * d
    assert (
        ours["h.0.attn"].macs == ours["h.0.attn.c_attn"].macs + ours["h.0.attn.c_proj"].macs + core
    )
    assert report.totals.macs == layers * (b * t * 12 * d * d + core)
    assert ours["wte"].macs == 0 and ours["wte"].output_shapes == ((b, t, d),)
    assert ours[""].output_shapes[0] == (b, t, d)


def test_tied_weights_count_once_where_torchinfo_counts_twice() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=90,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 90, (1, 8))
    report = _shapes(model, ids)
    summary, _ = _torchinfo_layers(model, input_data=[ids])
    unique = sum(
        p.numel() * p.element_size() for p in model.parameters()
    )  # parameters() yields tied ones once
    assert report.totals.param_bytes == unique
    assert summary.total_param_bytes == unique + model.lm_head.weight.numel() * 4
    assert _by_name(report)["lm_head"].macs == 8 * 32 * 90


def test_a_module_called_twice_sums_its_calls() -> None:
    report = _shapes(CalledTwice(), torch.randn(3, 6))
    fc = _by_name(report)["fc"]
    assert fc.calls == 2 and fc.macs == 2 * 3 * 6 * 6
    assert fc.output_shapes == ((3, 6),) and fc.output_bytes == 2 * 3 * 6 * 4
    assert report.totals.macs == 2 * 3 * 6 * 6 + 3 * 6 * 2


def test_saved_for_backward_counts_each_storage_once_and_no_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = _shapes(model, torch.randn(5, 4))
    # Linear 0 saves its input (5×4, since its weight needs a gradient), ReLU its output (5×8), which
    # Linear 2 saves too: one storage. The weights are not activation memory.
    assert report.totals.backward_bytes == (5 * 4 + 5 * 8) * 4
    assert _by_name(report)["2"].saved_bytes == 5 * 8 * 4
    assert report.totals.forward_bytes == (5 * 8 + 5 * 8 + 5 * 2) * 4
    frozen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).requires_grad_(False)
    assert _shapes(frozen, torch.randn(5, 4)).totals.backward_bytes == 0  # nothing needs a gradient


def test_the_forward_runs_on_meta_and_leaves_the_model_alone() -> None:
    model = Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = meta_copy(model)
    assert all(p.device.type == "meta" for p in copy.parameters())
    assert copy.get_parameter("head.weight") is copy.get_parameter("embed.weight")  # still tied
    _shapes(model, torch.randint(0, 50, (2, 5)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not model._forward_hooks and not model.head._forward_pre_hooks


def test_stored_dtypes_drive_the_copy_and_the_bytes(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=90,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "gpt2")
    result = invoke("tree", str(tmp_path / "gpt2"), "--input-shape", "1,8", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    shapes = doc["shapes"]
    unique = sum(p.numel() for p in model.parameters())
    assert shapes["totals"]["param_bytes"] == 2 * unique  # bf16 as stored, tied lm_head once
    root = shapes["modules"][0]
    assert (
        root["name"] == ""
        and root["output_dtypes"][0] == "bfloat16"
        and root["output_shapes"][0] == [1, 8, 90]
    )
    assert shapes["inputs"] == "random (1, 8) int64"
    ln = next(m for m in doc["modules"] if m["name"] == "transformer.ln_f")
    assert ln["extra_repr"] == model.transformer.ln_f.extra_repr() and ln["extra_repr"].startswith(
        "(32,), eps=1e-05"
    )


def test_extra_repr_is_what_print_shows() -> None:
    model = SmallCNN()
    reprs = dict(extra_reprs(model))
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            assert repr(mod) == f"{type(mod).__name__}({reprs.get(name, '')})", name
    assert reprs["features.0"] == "3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)"
    assert reprs["drop"] == "p=0.5, inplace=False"
    assert reprs["features.2"] == "inplace=True"
    assert "eps=1e-05" in reprs["features.1"]


def test_tree_shows_hyperparameters_of_live_modules_only() -> None:
    live = invoke("tree", "models.py:small_cnn", cwd=SAMPLES)
    assert live.exit_code == 0
    assert (
        "│   ├── 0  Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))  224 params  896 B\n"
        in live.stdout
    )
    assert "ReLU(inplace=True)\n" in live.stdout
    doc = json.loads(invoke("tree", "models.py:small_cnn", "--json", cwd=SAMPLES).stdout)
    assert {m["name"]: m["extra_repr"] for m in doc["modules"]}["classifier"] == (
        "in_features=16, out_features=10, bias=True"
    )
    assert doc["shapes"] is None
    ckpt = json.loads(invoke("tree", "small_cnn.pth", "--json", cwd=SAMPLES).stdout)
    assert all(m["extra_repr"] is None for m in ckpt["modules"])  # a checkpoint has no code
    assert "Conv2d(" not in invoke("tree", "small_cnn.pth", cwd=SAMPLES).stdout


def test_tree_input_shape_golden(golden: Golden) -> None:
    result = invoke(
        "tree",
        "models.py:small_cnn",
        "--weights",
        "small_cnn.safetensors",
        "--input-shape",
        "1,3,32,32",
        cwd=SAMPLES,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    golden("tree_small_cnn_shapes.txt", result.stdout)


def test_tree_shapes_json_document() -> None:
    result = invoke("tree", "models.py:tiny_lm", "--input-shape", "2,16", "--json", cwd=SAMPLES)
    assert result.exit_code == 0, result.stderr
    shapes = json.loads(result.stdout)["shapes"]
    assert set(shapes) == {"inputs", "training", "totals", "modules"}
    assert set(shapes["totals"]) == {
        "input_bytes",
        "forward_bytes",
        "backward_bytes",
        "param_bytes",
        "buffer_bytes",
        "flops",
        "macs",
    }
    assert set(shapes["modules"][0]) == {
        "name",
        "type",
        "calls",
        "output_shapes",
        "output_dtypes",
        "flops",
        "macs",
        "output_bytes",
        "saved_bytes",
    }
    by_name = {m["name"]: m for m in shapes["modules"]}
    assert by_name["lm_head"]["macs"] == 2 * 16 * 32 * 100 and by_name["lm_head"][
        "output_shapes"
    ] == [[2, 16, 100]]
    assert shapes["inputs"] == "random (2, 16) int64"  # the model has an nn.Embedding: ids
    assert shapes["totals"]["input_bytes"] == 2 * 16 * 8
    assert shapes["totals"]["param_bytes"] == 4 * 16_032  # the tied head counted once
    assert shapes["totals"]["flops"] == 2 * shapes["totals"]["macs"]


def test_input_file_example_input_array_and_config(tmp_path: Path) -> None:
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "batch.pt")
    (tmp_path / "net.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 3)
                self.example_input_array = torch.zeros(5, 3, 10, 10)

            def forward(self, x):
                return self.conv(x)
    """)
    )
    from_file = json.loads(
        invoke("tree", "net.py:Net", "--input", "batch.pt", "--json", cwd=tmp_path).stdout
    )
    assert from_file["shapes"]["modules"][0]["output_shapes"] == [[4, 2, 6, 6]]
    assert from_file["shapes"]["inputs"] == "batch.pt: (4, 3, 8, 8) float32"
    example = json.loads(invoke("tree", "net.py:Net", "--shapes", "--json", cwd=tmp_path).stdout)
    assert example["shapes"]["modules"][0]["output_shapes"] == [[5, 2, 8, 8]]
    assert example["shapes"]["modules"][0]["macs"] == 5 * 8 * 8 * 2 * 27
    (tmp_path / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "net.py:Net"\ninput_shape = "1,3,6,6"\n'
    )
    (tmp_path / "net.py").write_text(
        (tmp_path / "net.py").read_text().replace("self.example_input_array =", "_ =")
    )
    configured = invoke("tree", "--shapes", "--json", cwd=tmp_path)
    assert configured.exit_code == 0, configured.stderr
    assert json.loads(configured.stdout)["shapes"]["modules"][0]["output_shapes"] == [[1, 2, 4, 4]]
    plain = json.loads(invoke("tree", "--json", cwd=tmp_path).stdout)
    assert plain["shapes"] is None  # shapes run only when asked
    (tmp_path / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "torch.nn:Flatten"\ninput_shape = [[2, 3]]\n'
        'input_dtype = "float16"\n'
    )
    for args, dtype in (
        (["--shapes"], "float16"),
        (["--shapes", "--input-dtype", "float64"], "float64"),
    ):
        doc = json.loads(invoke("tree", *args, "--json", cwd=tmp_path).stdout)
        assert (
            doc["shapes"]["inputs"] == f"random (2, 3) {dtype}"
        )  # --input-dtype wins over the table
        assert doc["shapes"]["modules"][0]["output_dtypes"] == [dtype]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["tree", "small_cnn.pth", "--input-shape", "1,3,8,8"],
            "error: shapes need a forward pass, and small_cnn.pth is a checkpoint without the model's code: pass an "
            "entry point (file.py:NAME, with --weights small_cnn.pth or --meta) or a Hugging Face directory\n",
        ),
        (
            ["tree", "models.py:small_cnn", "--shapes"],
            "error: shapes need an input: pass --input FILE or --input-shape 1,3,224,224 (repeatable), set "
            "example_input_array on the model, or add input_shape to [tool.modinspect]\n",
        ),
        (
            ["tree", "models.py:small_cnn", "--input-dtype", "float16"],
            "error: --input-dtype applies to --input-shape or --shapes\n",
        ),
        (
            ["tree", "models.py:small_cnn", "--input-shape", "1,x"],
            "error: --input-shape '1,x' is not a list of integers like 2,16\n",
        ),
        (
            ["tree", "small_cnn_scripted.pt", "--unsafe-pickle", "--input-shape", "1,3,8,8"],
            "error: small_cnn_scripted.pt is TorchScript, whose modules take no Python hooks; measure shapes on the "
            "Python model instead, e.g. an entry point with --meta\n",
        ),
    ],
)
def test_shapes_user_errors(args: list[str], message: str) -> None:
    result = invoke(*args, cwd=SAMPLES)
    assert result.exit_code == 2
    assert result.stderr.endswith(message)


def test_a_forward_that_needs_data_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "masked.py").write_text(
        textwrap.dedent("""
        from torch import nn

        class Masked(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                y = self.fc(x)
                return y[y > 0]
    """)
    )
    result = invoke("tree", "masked.py:Masked", "--input-shape", "2,4", cwd=tmp_path)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: the forward pass could not run on the meta device in (model) (")
    assert line.endswith(
        "shapes need a forward without data-dependent steps (.item(), nonzero, boolean masks) "
        "and inputs of the right shape and dtype"
    )


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_keeps_no_hyperparameters_and_none_are_made_up() -> None:
    # torch.jit.load'ed modules lose extra_repr: print(model) shows RecursiveScriptModule(original_name=Conv2d).
    loaded = torch.jit.load(str(SAMPLES / "small_cnn_scripted.pt"))
    assert dict(loaded.named_modules())["features.0"].extra_repr() == "original_name=Conv2d"
    assert extra_reprs(loaded) == ()
    result = invoke("tree", "small_cnn_scripted.pt", "--unsafe-pickle", cwd=SAMPLES)
    assert result.exit_code == 0
    assert "│   ├── 0  Conv2d  224 params  896 B\n" in result.stdout


BIG_MODEL = """
from torch import nn

def build():
    # 64 × Linear(16384, 16384): 17.2 billion parameters, 68.7 GB in float32.
    return nn.Sequential(*(nn.Linear(16384, 16384) for _ in range(64)))
"""


PEAK_RSS = """
def peak_kib():
    # VmHWM: this process image's peak resident size. Not ru_maxrss, which survives exec and so starts
    # at the (large) pytest process this one was forked from.
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
"""


def _peak_rss_mib(code: str, cwd: Path) -> tuple[float, str]:
    """Run `code` in a fresh interpreter; its peak resident memory in MiB, and its stdout."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc/self/status to read the peak resident size")
    probe = PEAK_RSS + code + "\nimport sys\nprint(peak_kib(), file=sys.stderr)\n"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout


def test_memory_stays_flat_whatever_the_model_size(tmp_path: Path) -> None:
    """One interpreter (torch's import is most of the cost), two checks, in this order (the peak only grows):
    a 64 GiB model built with --meta runs in well under 1 GiB; a real 256 MiB model is not copied."""
    (tmp_path / "big.py").write_text(BIG_MODEL)
    peak, out = _peak_rss_mib(
        textwrap.dedent("""
        import sys
        from modinspect.cli.app import app
        sys.argv = ["modinspect", "tree", "big.py:build", "--meta", "--input-shape", "8,16384", "--json"]
        try:
            app()
        except SystemExit as e:
            assert e.code == 0
        meta_peak = peak_kib()
        import torch
        from torch import nn
        from modinspect.run.shapes import measure_shapes
        model = nn.Sequential(*(nn.Linear(4096, 4096, bias=False) for _ in range(4)))
        before = peak_kib()
        report = measure_shapes(model, ((torch.randn(2, 4096),), {}))
        print(meta_peak, before, report.totals.param_bytes)
    """),
        tmp_path,
    )
    document, _, figures = out.rstrip().rpartition("\n")
    meta_peak, before, real_bytes = (int(v) / 1024 for v in figures.split())
    shapes = json.loads(document)["shapes"]
    params = 64 * (16384 * 16384 + 16384)
    assert shapes["totals"]["param_bytes"] == 4 * params  # 64 GiB, on a machine with far less
    assert shapes["totals"]["macs"] == 64 * 8 * 16384 * 16384
    assert shapes["modules"][-1]["output_shapes"] == [[8, 16384]]
    assert meta_peak < 1024, f"peak RSS {meta_peak:.0f} MiB"  # torch itself takes ~300 MiB
    assert real_bytes * 1024 == 4 * 4096 * 4096 * 4
    # A naive deepcopy(model).to("meta") adds the model's 256 MiB here.
    assert peak - before < 64, f"measuring added {peak - before:.0f} MiB"


def test_runs_show_each_member_and_containers_no_call_line() -> None:
    result = invoke(
        "tree", "models.py:tiny_lm", "--input-shape", "2,16", "--depth", "2", cwd=SAMPLES
    )
    assert result.exit_code == 0, result.stderr
    assert (
        "├── blocks  ModuleList  12.8K params  49.9 KiB\n"
        "│   └── blocks.0 … blocks.2  ×3  Block  4.3K params each, 12.8K in all  49.9 KiB\n"
        "│       → [2, 16, 32]  131K MACs each  out 4.0 KiB  saved 24.2 KiB  (+4 below --depth)\n"
    ) in result.stdout
    assert (
        "MACs             496K  495,616 multiply-adds = 991,232 FLOPs / 2, one forward (eval mode)\n"
        in result.stdout
    )
    assert (
        "Param bytes  62.6 KiB  64,128 bytes in the stored dtypes, tied once; buffers 128 B\n"
        in result.stdout
    )
    # 3 blocks × (up 2×16×32×64 + down 2×16×64×32) + lm_head 2×16×32×100
    assert 3 * 2 * (2 * 16 * 32 * 64) + 2 * 16 * 32 * 100 == 495_616


def test_docs_shapes_example_is_real_output() -> None:
    readme = (REPO / "docs" / "tree.md").read_text(encoding="utf-8")
    command = "modinspect tree models.py:small_cnn --weights small_cnn.safetensors --input-shape 1,3,32,32 --depth 2"
    block = readme.split(f"$ cd sample_models && {command}\n", 1)[1].split("```", 1)[0]
    result = invoke(*command.split()[1:], cwd=SAMPLES)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    shown = [line for line in block.splitlines() if line != "…"]
    assert len(shown) > 20
    positions = [lines.index(line) for line in shown]  # each line shown is a real line, in order
    assert positions == sorted(positions)


def test_library_api_attaches_shapes_to_a_tree() -> None:
    import modinspect
    from modinspect.run.inputs import InputSpec

    with modinspect.open_source("models.py:small_cnn", base=SAMPLES, meta=True) as src:
        report = modinspect.add_layers(
            modinspect.build_tree(src), src, InputSpec(shapes=((2, 3, 8, 8),))
        )
    assert report.shapes is not None and report.shapes.get("classifier") is not None
    assert (
        report.shapes.totals.macs
        == modinspect.measure_shapes(live(src), ((torch.zeros(2, 3, 8, 8),), {})).totals.macs
    )
    assert dict(report.extra_reprs)["classifier"] == "in_features=16, out_features=10, bias=True"


class _Locked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import threading

        self.fc = nn.Linear(3, 3)
        self.lock = threading.Lock()  # deepcopy cannot copy it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_model_that_cannot_be_copied() -> None:
    from modinspect.errors import UsageError

    with pytest.raises(
        UsageError,
        match=r"^the model cannot be copied to the meta device \(TypeError: cannot pickle "
        r"'_thread.lock' object\); build it there instead: an entry point with --meta$",
    ):
        _shapes(_Locked(), torch.randn(2, 3))
    with torch.device("meta"):
        meta = _Locked()
    report = _shapes(
        meta, torch.randn(2, 3)
    )  # already on meta: measured as it is, hooks removed afterwards
    assert _by_name(report)["fc"].macs == 2 * 3 * 3
    assert not meta.fc._forward_hooks and not meta.fc._forward_pre_hooks


def test_a_module_shared_under_two_names_shows_under_both() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(4, 4))
            self.dec = self.enc  # the same module object twice

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(self.enc(x))

    report = _shapes(Shared(), torch.randn(2, 4))
    ours = _by_name(report)
    assert ours["enc.0"].calls == ours["dec.0"].calls == 2
    assert ours["enc.0"].macs == ours["dec.0"].macs == 2 * 2 * 4 * 4
    assert report.totals.macs == 2 * 2 * 4 * 4  # the work is counted once in the totals
    assert report.totals.forward_bytes == 2 * 2 * 4 * 4  # two calls' outputs, once


def test_a_collapsed_run_whose_hyperparameters_differ_says_so(tmp_path: Path) -> None:
    (tmp_path / "drops.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.Dropout(p)) for p in (0.0, 0.1, 0.2)),
                                 *(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)) for _ in range(2)))
    """)
    )
    result = invoke("tree", "drops.py:build", "--json", cwd=tmp_path)
    doc = json.loads(result.stdout)
    # Blocks 0-4 have one structure and collapse into one row; 0-2 differ in p, so the note names the run.
    assert doc["notes"] == [
        "0 … 4: hyperparameters differ between the blocks (shown: the first); --expand shows each"
    ]
    assert {m["name"]: m["extra_repr"] for m in doc["modules"]}["2.1"] == "p=0.2, inplace=False"
    same = invoke("tree", "models.py:tiny_lm", "--json", cwd=SAMPLES)  # blocks.0 … blocks.2 agree
    assert not any("differ" in note for note in json.loads(same.stdout)["notes"])
    expanded = invoke("tree", "drops.py:build", "--expand", "--json", cwd=tmp_path)
    assert json.loads(expanded.stdout)["notes"] == []


def test_saved_bytes_are_measured_under_no_grad_too() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with torch.no_grad():  # a notebook's context must not change the measure
        report = _shapes(model, torch.randn(5, 4))
    assert report.totals.backward_bytes == (5 * 4 + 5 * 8) * 4
