"""Quantized checkpoints: logical parameter counts, stored bytes, bits per weight, schemes and auxiliary tensors.

Each test quantizes a float torch model and checks modinspect's counts against that float model's own
`numel()`s. Files come from the quantizing library wherever it runs here (bitsandbytes through transformers'
save_pretrained, compressed-tensors' compressor, torch.ao's quantize_dynamic); GPTQ, AWQ and FP8 need CUDA
kernels to quantize, so their tensors are packed here with their reference implementations' packing code
(cited in each test) and written with safetensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Tuple  # noqa: UP035  # TorchScript's annotations need typing's

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modinspect.analysis.tree import build_tree
from modinspect.render.jsonout import tree_document, tree_json
from modinspect.reports import ModuleRow, TreeReport
from modinspect.run.source import open_source


def _tree(path: Path) -> TreeReport:
    with open_source(str(path)) as source:
        return build_tree(source)


def _float_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _rtn(
    weight: torch.Tensor, group: int, bits: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric quantization per group of input columns: (int weight [out, in], scales, zeros)."""
    out, inputs = weight.shape
    w = weight.reshape(out, inputs // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scales = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    zeros = torch.round(-lo / scales).clamp(0, 2**bits - 1)
    q = torch.round(w / scales[..., None] + zeros[..., None]).clamp(0, 2**bits - 1).to(torch.int32)
    return (
        q.reshape(out, inputs),
        scales.t().contiguous().half(),
        zeros.t().contiguous().to(torch.int32),
    )


def _pack_rows(intweight: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ's packing of an [in, out] int weight along its rows: 32 / bits consecutive input rows per int32."""
    per = 32 // bits
    packed = torch.zeros(intweight.shape[0] // per, intweight.shape[1], dtype=torch.int64)
    for j in range(per):
        packed |= intweight[j::per].to(torch.int64) << (bits * j)
    return (packed - (packed >= 2**31).to(torch.int64) * 2**32).to(torch.int32)


def _pack_cols(values: torch.Tensor, bits: int, order: list[int]) -> torch.Tensor:
    """Packing along the columns: column c of the result holds columns c * per + order[i] at bit i * bits."""
    per = 32 // bits
    packed = torch.zeros(values.shape[0], values.shape[1] // per, dtype=torch.int64)
    for col in range(values.shape[1] // per):
        for i in range(per):
            packed[:, col] |= values[:, col * per + order[i]].to(torch.int64) << (i * bits)
    return (packed - (packed >= 2**31).to(torch.int64) * 2**32).to(torch.int32)


def _layer(report: TreeReport, name: str) -> ModuleRow:
    return next(m for m in report.modules if m.name == name)


def _check_counts(
    report: TreeReport,
    model: nn.Module,
    file_tensors: dict[str, torch.Tensor],
    packed: str,
    aux: set[str],
    scheme: dict[str, str],
) -> None:
    """Params equal the float model's; each layer's bits per weight is its stored bytes over its float numel."""
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.bytes == sum(t.numel() * t.element_size() for t in file_tensors.values())
    rows = {r.name: r for r in report.tensors}
    for name, linear in _linears(model).items():
        row = rows[f"{name}.{packed}"]
        assert row.logical_shape == tuple(linear.weight.shape) and row.kind == "parameter"
        assert row.scheme == scheme[name]
        mine = [
            k
            for k in file_tensors
            if k.startswith(name + ".") and k.removeprefix(name + ".") in aux
        ]
        assert mine and all(
            rows[k].kind == "quant-aux" and rows[k].scheme == scheme[name] for k in mine
        )
        stored = sum(
            file_tensors[k].numel() * file_tensors[k].element_size()
            for k in [*mine, f"{name}.{packed}"]
        )
        module = _layer(report, name)
        assert module.scheme == scheme[name]
        assert module.bits_per_weight == stored * 8 / linear.weight.numel()
        assert module.params == sum(p.numel() for p in linear.parameters())
    assert json.loads(tree_json(report)) == json.loads(json.dumps(tree_document(report)))


def test_gptq_reference_packing_counts_the_float_model(tmp_path: Path) -> None:
    """GPTQ as AutoGPTQ packs it (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, QuantLinear.pack; optimum
    and transformers load the same layout): qweight int32 [in / 8, out] packed along the input rows, qzeros
    [groups, out / 8] packed along the columns in order, scales fp16 [groups, out], g_idx int32 [in]."""
    model = _float_model()
    tensors: dict[str, torch.Tensor] = {}
    groups = {"0": 128, "2": 32}
    for name, linear in _linears(model).items():
        q, scales, zeros = _rtn(linear.weight.detach(), groups[name])
        tensors |= {
            f"{name}.qweight": _pack_rows(q.t().contiguous(), 4),
            f"{name}.qzeros": _pack_cols(zeros - 1, 4, list(range(8))),
            f"{name}.scales": scales,
            f"{name}.g_idx": torch.arange(linear.in_features, dtype=torch.int32) // groups[name],
            f"{name}.bias": linear.bias.detach().half(),
        }
    save_file(tensors, tmp_path / "gptq.safetensors")
    report = _tree(tmp_path / "gptq.safetensors")
    _check_counts(
        report,
        model,
        tensors,
        "qweight",
        {"qzeros", "scales", "g_idx"},
        {"0": "gptq 4-bit g128", "2": "gptq 4-bit g32"},
    )
    assert (
        report.by_scheme[0].dtype == "gptq 4-bit g128" and report.by_scheme[0].elements == 256 * 64
    )


def test_awq_reference_packing_counts_the_float_model(tmp_path: Path) -> None:
    """AWQ as AutoAWQ packs it (awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear): qweight int32
    [in, out / 8] packed along the output columns in the order [0, 2, 4, 6, 1, 3, 5, 7], qzeros the same way
    [groups, out / 8], scales fp16 [groups, out]; no g_idx."""
    model = _float_model()
    tensors: dict[str, torch.Tensor] = {}
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    for name, linear in _linears(model).items():
        q, scales, zeros = _rtn(linear.weight.detach(), 64)
        tensors |= {
            f"{name}.qweight": _pack_cols(q.t().contiguous(), 4, order),
            f"{name}.qzeros": _pack_cols(zeros, 4, order),
            f"{name}.scales": scales,
            f"{name}.bias": linear.bias.detach().half(),
        }
    save_file(tensors, tmp_path / "awq.safetensors")
    _check_counts(
        _tree(tmp_path / "awq.safetensors"),
        model,
        tensors,
        "qweight",
        {"qzeros", "scales"},
        {"0": "awq 4-bit g64", "2": "awq 4-bit per-channel"},
    )  # 2 has 64 inputs: one group


def test_fp8_block_scales_count_the_float_model(tmp_path: Path) -> None:
    """FP8 with 128×128 block scales, as DeepSeek-V3 ships it (its inference/fp8_cast_bf16.py reads it back):
    weight float8_e4m3fn at the float shape, weight_scale_inv float32 [ceil(out / 128), ceil(in / 128)]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 320, bias=False), nn.Linear(320, 64, bias=False))
    tensors: dict[str, torch.Tensor] = {}
    for name, linear in _linears(model).items():
        out, inputs = linear.weight.shape
        tensors[f"{name}.weight"] = linear.weight.detach().to(torch.float8_e4m3fn)
        tensors[f"{name}.weight_scale_inv"] = torch.ones(
            math.ceil(out / 128), math.ceil(inputs / 128)
        )
    save_file(tensors, tmp_path / "fp8.safetensors")
    _check_counts(
        _tree(tmp_path / "fp8.safetensors"),
        model,
        tensors,
        "weight",
        {"weight_scale_inv"},
        {"0": "fp8 e4m3 block 128×128", "1": "fp8 e4m3 block 128×128"},
    )


def test_compressed_tensors_pack_quantized_counts_the_float_model(tmp_path: Path) -> None:
    """compressed-tensors' own PackedQuantizationCompressor writes weight_packed, weight_scale, weight_shape."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=32
        ),
    )
    model = _float_model()
    tensors: dict[str, torch.Tensor] = {}
    for name, linear in _linears(model).items():
        w = linear.weight.detach()
        scale = w.reshape(w.shape[0], -1, 32).abs().amax(-1) / 7
        packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
        tensors |= {f"{name}.{k}": v for k, v in packed.items()} | {
            f"{name}.bias": linear.bias.detach()
        }
    save_file(tensors, tmp_path / "ct.safetensors")
    _check_counts(
        _tree(tmp_path / "ct.safetensors"),
        model,
        tensors,
        "weight_packed",
        {"weight_scale", "weight_shape", "weight_zero_point"},
        {n: "compressed-tensors pack-quantized 4-bit g32" for n in ("0", "2")},
    )


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_torch_ao_quantize_dynamic_state_dict_counts_the_float_model(tmp_path: Path) -> None:
    """torch.ao's quantize_dynamic: each Linear's qint8 weight and bias in _packed_params, scale and zero_point aux."""
    model = _float_model()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    torch.save(quantized.state_dict(), tmp_path / "qd.pth")
    report = _tree(tmp_path / "qd.pth")
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    rows = {r.name: r for r in report.tensors}
    for name, linear in _linears(model).items():
        weight = rows[f"{name}._packed_params._packed_params.0"]
        assert (weight.shape, weight.dtype, weight.scheme) == (
            tuple(linear.weight.shape),
            "qint8",
            "qint8 per-tensor",
        )
        assert rows[f"{name}.scale"].kind == rows[f"{name}.zero_point"].kind == "quant-aux"
        assert (
            _layer(report, name).bits_per_weight
            == (linear.weight.numel() + 4 + 8) * 8 / linear.weight.numel()
        )
    assert (
        report.totals.buffers is None
    )  # scale and zero_point, the only "standard buffer" names, are aux


def _bnb_dirs(tmp_path: Path) -> tuple[nn.Module, Path, Path, Path]:
    pytest.importorskip("bitsandbytes")
    transformers = pytest.importorskip("transformers")
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "float")
    transformers.logging.set_verbosity_error()
    for name, qc in (
        ("nf4", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
        ("int8", BitsAndBytesConfig(load_in_8bit=True)),
        (
            "fp4dq",
            BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True
            ),
        ),
    ):
        try:
            quantized = transformers.AutoModelForCausalLM.from_pretrained(
                tmp_path / "float", quantization_config=qc, device_map="cpu"
            )
        except (ImportError, RuntimeError, ValueError) as exc:  # bitsandbytes without a CPU backend
            pytest.skip(f"bitsandbytes cannot quantize on this CPU: {exc}")
        quantized.save_pretrained(tmp_path / name)
    return model, tmp_path / "nf4", tmp_path / "int8", tmp_path / "fp4dq"


def test_bitsandbytes_save_pretrained_counts_the_float_model(tmp_path: Path) -> None:
    """transformers' save_pretrained of bitsandbytes nf4, int8 and double-quantized fp4 models: the float model's parameters, each
    4-bit weight at the shape its quant_state blob records, absmax/quant_map/quant_state and SCB as aux."""
    from safetensors import safe_open

    model, nf4, int8, fp4dq = _bnb_dirs(tmp_path)
    floats = dict(model.named_parameters())
    params = sum(p.numel() for p in model.parameters())
    for folder, scheme, aux in (
        (nf4, "bnb nf4", (".weight.absmax", ".weight.quant_map")),
        (int8, "bnb int8", (".SCB", ".weight_format")),
        (
            fp4dq,
            "bnb fp4 double-quant",
            (".weight.absmax", ".weight.nested_absmax", ".weight.nested_quant_map"),
        ),
    ):
        report = _tree(folder)
        assert report.totals.params == params, folder
        with safe_open(folder / "model.safetensors", "pt") as f:
            stored = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118
        rows = {r.name: r for r in report.tensors}
        layers = [r for r in report.modules if r.scheme is not None]
        assert (
            len(layers) == 2 * 7
        )  # q, k, v, o, gate, up, down in each of 2 layers; lm_head stays float
        for layer in layers:
            assert layer.scheme == scheme
            weight = rows[layer.name + ".weight"]
            assert weight.logical_shape == tuple(floats[layer.name + ".weight"].shape)
            assert all(rows[layer.name + a].kind == "quant-aux" for a in aux)
            nbytes = sum(
                math.prod(s.get_shape()) * (4 if s.get_dtype() == "F32" else 1)
                for k, s in stored.items()
                if k.startswith(layer.name + ".") and k != layer.name + ".bias"
            )
            assert layer.bits_per_weight == nbytes * 8 / weight.numel
        assert report.by_scheme[0].dtype == scheme
        assert report.by_scheme[0].elements == sum(
            floats[r.name + ".weight"].numel() for r in layers
        )


@pytest.mark.parametrize(
    "blob",
    [
        b"[" * 60_000,
        b'{"shape": [' + b"9" * 60_000 + b"]}",
        b'{"shape": [4096, 4096]}',
        b'{"shape": "x"}',
        b"\xff" * 100,
        b'{"shape": [-8, -8]}',
    ],
)
def test_a_bnb_quant_state_blob_that_lies_is_ignored(tmp_path: Path, blob: bytes) -> None:
    """The blob is data: deep JSON, huge or negative dims, a shape larger than the bytes can hold fall back to
    the element count the packed bytes hold (two 4-bit weights a byte)."""
    tensors = {
        "l.weight": torch.zeros(32, 1, dtype=torch.uint8),
        "l.weight.absmax": torch.ones(1),
        "l.weight.quant_state.bitsandbytes__nf4": torch.frombuffer(
            bytearray(blob), dtype=torch.uint8
        ),
    }
    save_file(tensors, tmp_path / "b.safetensors")
    report = _tree(tmp_path / "b.safetensors")
    assert report.totals.params == 64
    assert {r.name: r.logical_shape for r in report.tensors}["l.weight"] == (64,)


def _qlinear(model: nn.Module, i: int) -> torch.ao.nn.quantized.dynamic.Linear:
    """Layer `i` of a `_qdyn` model: a dynamically quantized Linear."""
    layer = model.get_submodule(str(i))
    assert isinstance(layer, torch.ao.nn.quantized.dynamic.Linear)
    return layer


def _qdyn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_load_into_a_quantize_dynamic_model_plans_and_does_what_load_state_dict_does(
    tmp_path: Path,
) -> None:
    """torch.ao's packed params are no false 'unexpected': the plan loads all 8 keys, as load_state_dict(strict=True)
    accepts them, and performing it leaves the model with the checkpoint's weights, biases, scales."""
    from modinspect.commands.load import perform_load
    from modinspect.sources.module import ModuleSource

    source_model, target = _qdyn(1), _qdyn(0)
    torch.save(source_model.state_dict(), tmp_path / "q.pth")
    _qdyn(0).load_state_dict(
        torch.load(tmp_path / "q.pth", weights_only=False), strict=True
    )  # torch agrees
    model = ModuleSource(target, "qdyn", "entrypoint")
    assert model.info("0._packed_params._packed_params.0").dtype == "qint8"
    with open_source(str(tmp_path / "q.pth")) as checkpoint:
        report = perform_load(model, checkpoint, strict=True)
    assert report.plan.strict_ok and report.performed
    assert sorted(report.plan.loaded) == sorted(
        [
            f"{i}.{k}"
            for i in (0, 2)
            for k in (
                "scale",
                "zero_point",
                "_packed_params._packed_params.0",
                "_packed_params._packed_params.1",
            )
        ]
    )
    for i in (0, 2):
        loaded, saved = _qlinear(target, i), _qlinear(source_model, i)
        assert torch.equal(loaded.weight().int_repr(), saved.weight().int_repr())
        assert loaded.weight().q_scale() == saved.weight().q_scale()
        assert torch.equal(loaded.bias(), saved.bias())
    assert build_tree(model).totals.params == sum(
        p.numel()
        for p in nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).parameters()
    )


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_quantize_dynamic_restores_packed_params_as_data(tmp_path: Path) -> None:
    """A scripted quantize_dynamic model keeps its int8 weights in LinearPackedParamsBase's __getstate__ state:
    listed from that state as data (torch.jit.load never runs), named as its state_dict names them."""
    quantized = _qdyn(0)
    torch.jit.save(torch.jit.script(quantized), tmp_path / "q.pt")
    with open_source(str(tmp_path / "q.pt")) as source:
        assert source.format == "torchscript"
        report = build_tree(source)
        assert report.totals.params == 16 * 32 + 32 + 32 * 8 + 8
        for i in (0, 2):
            linear = _qlinear(quantized, i)
            weight, bias = linear.weight(), linear.bias()
            stored = source.read_tensor(f"{i}._packed_params._packed_params.0")
            assert (
                torch.equal(stored.int_repr(), weight.int_repr())
                and stored.q_scale() == weight.q_scale()
            )
            assert torch.equal(source.read_tensor(f"{i}._packed_params._packed_params.1"), bias)
    assert sorted(source.names()) == [
        f"{i}._packed_params._packed_params.{j}" for i in (0, 2) for j in (0, 1)
    ]


class StateHolder(nn.Module):
    """A module whose state TorchScript saves through __getstate__ / __setstate__ only."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.arange(12.0).reshape(3, 4)
        self.extra = torch.ones(2, dtype=torch.int64)
        self.k = 2

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, int, Tuple[torch.Tensor, torch.Tensor], bool]:  # noqa: UP006
        return (self.table, self.k, (self.extra, self.extra + 1), self.training)

    @torch.jit.export
    def __setstate__(
        self, state: tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor], bool]
    ) -> None:
        self.table, self.k, self.extra, self.training = state[0], state[1], state[2][0], state[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.table


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_setstate_state_tensors_are_listed(tmp_path: Path) -> None:
    """Any TorchScript module's __getstate__ tensors are listed (by position, one tuple down as `2.0`), as data."""
    holder = StateHolder()
    model = nn.Sequential(nn.Linear(4, 3), holder)
    torch.jit.save(torch.jit.script(model), tmp_path / "s.pt")
    with open_source(str(tmp_path / "s.pt")) as source:
        rows = {r.name: r for r in build_tree(source).tensors}
        assert {n: (r.shape, r.dtype, r.kind) for n, r in rows.items() if n.startswith("1.")} == {
            "1.0": ((3, 4), "float32", "buffer"),
            "1.2.0": ((2,), "int64", "buffer"),
            "1.2.1": ((2,), "int64", "buffer"),
        }
        assert torch.equal(source.read_tensor("1.0"), holder.table)
        assert torch.equal(source.read_tensor("1.2.1"), holder.extra + 1)
        assert not any("custom __setstate__" in n for n in source.notes)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_ao_per_channel_is_named_so_in_state_dict_torchscript_and_live_model(
    tmp_path: Path,
) -> None:
    """The qscheme comes from the quantized tensor itself (its pickled quantizer, or qscheme() live)."""
    from modinspect.sources.module import ModuleSource

    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantized = torch.ao.quantization.quantize_dynamic(
        float_model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    )
    assert quantized[0].weight().qscheme() == torch.per_channel_affine
    torch.save(quantized.state_dict(), tmp_path / "pc.pth")
    torch.jit.save(torch.jit.script(quantized), tmp_path / "pc.pt")
    reports = [
        _tree(tmp_path / "pc.pth"),
        _tree(tmp_path / "pc.pt"),
        build_tree(ModuleSource(quantized, "m", "entrypoint")),
    ]
    for report in reports:
        assert [(m.name, m.scheme) for m in report.modules if m.scheme] == [
            ("0", "qint8 per-channel"),
            ("2", "qint8 per-channel"),
        ]
        assert report.totals.params == sum(p.numel() for p in float_model.parameters())


def test_gptq_directory_with_config_counts_the_float_llama(tmp_path: Path) -> None:
    """A save_pretrained-style directory (config.json with quantization_config) of GPTQ-packed weights (packing as
    in the test above): the model built from config.json has the float model's parameters, each projection its
    scheme, and the float weights are noted as stored packed, not missing."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "float")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name.endswith("_proj.weight"):
            layer = name.removesuffix(".weight")
            q, scales, zeros = _rtn(value, 32)
            tensors |= {
                f"{layer}.qweight": _pack_rows(q.t().contiguous(), 4),
                f"{layer}.qzeros": _pack_cols(zeros - 1, 4, list(range(8))),
                f"{layer}.scales": scales,
                f"{layer}.g_idx": torch.arange(value.shape[1], dtype=torch.int32) // 32,
            }
        elif name != "lm_head.weight" or not config.tie_word_embeddings:
            tensors[name] = value.contiguous()
    folder = tmp_path / "gptq"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    raw = json.loads((tmp_path / "float" / "config.json").read_text())
    raw["quantization_config"] = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 32,
        "desc_act": False,
    }
    (folder / "config.json").write_text(json.dumps(raw))
    report = _tree(folder)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert [m.scheme for m in report.modules if m.scheme] == ["gptq 4-bit g32"] * 14
    assert (
        "14 model weights are stored packed by the quantization (e.g. model.layers.0.self_attn.q_proj.weight as "
        "model.layers.0.self_attn.q_proj.qweight)" in report.notes
    )
    assert not any("not in the weights" in n for n in report.notes)


def test_quant_state_blobs_are_read_within_one_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs are read up to MAX_BLOBS_BYTES in all (a file of 100k blobs costs no more): past it, a layer falls
    back to the element count of its packed bytes."""
    from modinspect.analysis import quant

    blob = json.dumps({"shape": [8, 8], "pad": "x" * 60}).encode()
    tensors: dict[str, torch.Tensor] = {}
    for i in range(3):
        tensors |= {
            f"l{i}.weight": torch.zeros(32, 1, dtype=torch.uint8),
            f"l{i}.weight.absmax": torch.ones(1),
            f"l{i}.weight.quant_state.bitsandbytes__nf4": torch.frombuffer(
                bytearray(blob), dtype=torch.uint8
            ),
        }
    save_file(tensors, tmp_path / "b.safetensors")
    monkeypatch.setattr(quant, "MAX_BLOBS_BYTES", 2 * len(blob))
    shapes = {
        r.name: r.logical_shape
        for r in _tree(tmp_path / "b.safetensors").tensors
        if r.logical_shape
    }
    assert shapes == {"l0.weight": (8, 8), "l1.weight": (8, 8), "l2.weight": (64,)}


@pytest.mark.parametrize(
    ("kind", "strategy", "scheme"),
    [("int", "channel", "int8 per-channel"), ("float", "tensor", "fp8 e4m3 per-tensor")],
)
def test_compressed_tensors_int_and_float_quantized_count_the_float_model(
    tmp_path: Path, kind: str, strategy: str, scheme: str
) -> None:
    """compressed-tensors' own Int/FloatQuantizationCompressor: an 8-bit `weight` at the float shape, `weight_scale`."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.naive_quantized.base import (
        FloatQuantizationCompressor,
        IntQuantizationCompressor,
    )
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    compressor = IntQuantizationCompressor if kind == "int" else FloatQuantizationCompressor
    args = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy=strategy),
    )
    model = _float_model()
    tensors: dict[str, torch.Tensor] = {}
    for name, linear in _linears(model).items():
        w = linear.weight.detach()
        scale = (
            w.abs().amax(1, keepdim=True) / 127
            if strategy == "channel"
            else (w.abs().max() / 448).reshape(1)
        )
        packed = compressor.compress({"weight": w, "weight_scale": scale}, args)
        tensors |= {f"{name}.{k}": v for k, v in packed.items()} | {
            f"{name}.bias": linear.bias.detach()
        }
    save_file(tensors, tmp_path / "ct8.safetensors")
    _check_counts(
        _tree(tmp_path / "ct8.safetensors"),
        model,
        tensors,
        "weight",
        {"weight_scale", "weight_zero_point"},
        {"0": scheme, "2": scheme},
    )
