"""Dequantisation for `diff`: every scheme against its own library's reference, on files that library wrote.

GGUF: gguf-py's GGUFWriter and `gguf.quants.dequantize`; torch.ao: torch's `Tensor.dequantize()`;
bitsandbytes: transformers' save_pretrained of a bnb-quantized model (CPU) and `bitsandbytes.functional`;
compressed-tensors: its own `PackedQuantizationCompressor.compress`/`decompress`; GPTQ and AWQ: packed as
AutoGPTQ's `QuantLinear.pack` and AutoAWQ's `WQLinear_GEMM.from_linear` pack (their loops, transcribed
below); FP8 block scales: DeepSeek-V3's layout, computed block by block here. The metrics are checked
against torch on the fully dequantised tensors.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from safetensors.torch import save_file
from typer.testing import CliRunner

import ggufs
from modinspect.analysis.dequant import dequantized
from modinspect.analysis.dequant.gguf_blocks import PORTED
from modinspect.analysis.diff import diff_sources
from modinspect.cli.app import app
from modinspect.run.source import open_source

KTYPES = [T[name] for name in PORTED] + [T.IQ4_NL, T.TQ2_0]


def _read_all(src_path: Path, name: str, chunk: int = 300) -> torch.Tensor:
    with open_source(str(src_path)) as src:
        view = dequantized(src)
        assert view is not None
        shape = view.info(name).shape
        return torch.cat(list(view.iter_chunks(name, chunk))).reshape(shape)


@pytest.mark.parametrize("qtype", KTYPES, ids=lambda t: t.name)
def test_gguf_types_dequantise_as_gguf_py_does(tmp_path: Path, qtype: T) -> None:
    path = ggufs.write(tmp_path / "q.gguf", [("blk.0.ffn_up.weight", (6, 512), qtype)])
    (ref_t,) = GGUFReader(str(path)).tensors
    with np.errstate(all="ignore"):  # random block bytes: some float16 scales are NaN or Inf
        ref = torch.from_numpy(np.array(gguf_dequantize(ref_t.data, qtype))).reshape(6, 512)
    got = _read_all(path, "blk.0.ffn_up.weight")  # chunks of 300: across rows and blocks
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)


def test_gguf_type_without_a_dequantiser_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    path = ggufs.write(tmp_path / "q.gguf", [("w", (2, 256), T.IQ4_XS)])
    monkeypatch.setitem(sys.modules, "gguf", None)  # as without the gguf package
    ref = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2, 256)}, str(ref))
    result = CliRunner().invoke(app, ["diff", str(ref), str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: dequantizing IQ4_XS needs the gguf package (pip install gguf); modinspect itself "
        "dequantizes Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"
    ]


def _metrics(w: torch.Tensor, q: torch.Tensor) -> tuple[float, float, float]:
    w64, q64 = w.double().reshape(-1), q.double().reshape(-1)
    rel = float(torch.linalg.vector_norm(w64 - q64) / torch.linalg.vector_norm(w64))
    cos = float(torch.nn.functional.cosine_similarity(w64, q64, dim=0))
    snr = float(10 * torch.log10((w64 * w64).sum() / ((w64 - q64) ** 2).sum()))
    return rel, cos, snr


def _quantized_pair(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A float safetensors file and its GGUF in Q8_0, Q4_0 and Q5_1 (gguf-py's quantizers), plus the
    fully dequantised reference of each (gguf-py's dequantize)."""
    rng = np.random.default_rng(1)
    floats = {
        "blk.0.attn_q.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((96, 128)).astype(np.float32),
        "blk.1.attn_q.weight": rng.standard_normal((64, 256)).astype(np.float32),
        "output_norm.weight": rng.standard_normal(128).astype(np.float32),
    }
    types = {
        "blk.0.attn_q.weight": T.Q8_0,
        "blk.0.ffn_up.weight": T.Q4_0,
        "blk.1.attn_q.weight": T.Q5_1,
        "output_norm.weight": T.F32,
    }
    ref = tmp_path / "full.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in floats.items()}, str(ref))
    gguf_path = ggufs.write(
        tmp_path / "q.gguf",
        [(k, v.shape, types[k]) for k, v in floats.items()],
        edit=lambda name, _data: (
            gguf_quantize(floats[name], types[name]) if types[name] != T.F32 else floats[name]
        ),
    )
    deq = {}
    for t in GGUFReader(str(gguf_path)).tensors:
        values = np.array(gguf_dequantize(t.data, t.tensor_type)).reshape(floats[t.name].shape)
        deq[t.name] = torch.from_numpy(values.astype(np.float32))
    return (
        ref,
        gguf_path,
        {k: torch.from_numpy(v) for k, v in floats.items()}
        | {f"deq:{k}": v for k, v in deq.items()},
    )


def test_diff_reports_each_tensors_error_against_torch(tmp_path: Path) -> None:
    ref, gguf_path, t = _quantized_pair(tmp_path)
    with open_source(str(ref)) as a, open_source(str(gguf_path)) as b:
        report = diff_sources(a, b)
    assert report.dequantized == "b"
    assert [(q.name, q.scheme, q.bits_per_weight) for q in report.quantization] == [
        ("blk.0.ffn_up.weight", "Q4_0", 4.5),
        ("blk.1.attn_q.weight", "Q5_1", 6.0),
        ("blk.0.attn_q.weight", "Q8_0", 8.5),
    ]
    for q in report.quantization:
        rel, cos, snr = _metrics(t[q.name], t[f"deq:{q.name}"])
        assert q.numel == t[q.name].numel()
        assert q.rel_error == pytest.approx(rel, rel=1e-6)
        assert q.cosine == pytest.approx(cos, rel=1e-6)
        assert q.snr_db == pytest.approx(snr, rel=1e-6)
    blk0 = next(m for m in report.quant_modules if m.module == "blk.0")
    names = ["blk.0.attn_q.weight", "blk.0.ffn_up.weight"]
    w = torch.cat([t[n].reshape(-1) for n in names])
    wq = torch.cat([t[f"deq:{n}"].reshape(-1) for n in names])
    rel, cos, snr = _metrics(w, wq)
    assert (blk0.tensors, blk0.schemes) == (2, ("Q8_0", "Q4_0"))
    assert blk0.bits_per_weight == pytest.approx((8.5 * 64 * 128 + 4.5 * 96 * 128) / (160 * 128))
    assert (blk0.rel_error, blk0.cosine, blk0.snr_db) == pytest.approx((rel, cos, snr), rel=1e-6)
    assert report.dtype_mismatch == () and report.only_in_a == () and report.only_in_b == ()
    # the other way round: still relative to the float side
    with open_source(str(gguf_path)) as a, open_source(str(ref)) as b:
        back = diff_sources(a, b)
    assert back.dequantized == "a"
    assert [q.rel_error for q in back.quantization] == pytest.approx(
        [q.rel_error for q in report.quantization], rel=1e-9
    )


def test_cli_shows_the_quantization_tables(tmp_path: Path) -> None:
    ref, gguf_path, _t = _quantized_pair(tmp_path)
    result = CliRunner().invoke(app, ["diff", str(ref), str(gguf_path)], env={"COLUMNS": "120"})
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "B's 3 quantized tensors dequantised and compared with A's floats" in out
    assert "Quantization error, worst first" in out and "By module, worst first" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("blk.0.ffn_up.weight ")]
    assert lines[0][1:3] == ["Q4_0", "4.50"]
    doc = json.loads(CliRunner().invoke(app, ["diff", str(ref), str(gguf_path), "--json"]).stdout)
    assert doc["dequantized"] == "b"
    assert [q["scheme"] for q in doc["quantization"]] == ["Q4_0", "Q5_1", "Q8_0"]


# ------------------------------------------------------------------ torch.ao


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_ao_dequantises_as_tensor_dequantize(tmp_path: Path, per_channel: bool) -> None:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with _no_check():  # torch.ao's deprecation warnings
        q = quantize_dynamic(model, {torch.nn.Linear: qconfig})  # type: ignore[no-untyped-call]
    torch.save(q.state_dict(), tmp_path / "q.pt")
    torch.save(model.state_dict(), tmp_path / "f.pt")
    sd = q.state_dict()
    for i in ("0", "2"):
        packed = sd[f"{i}._packed_params._packed_params"]
        got = _read_all(tmp_path / "q.pt", f"{i}.weight", chunk=100)
        torch.testing.assert_close(got, packed[0].dequantize(), rtol=0, atol=0)
    with open_source(str(tmp_path / "f.pt")) as a, open_source(str(tmp_path / "q.pt")) as b:
        report = diff_sources(a, b)
    assert report.only_in_a == () and report.only_in_b == ()
    scheme = "qint8 per-channel" if per_channel else "qint8 per-tensor"
    assert {q.scheme for q in report.quantization} == {scheme}
    for qe in report.quantization:
        i = qe.name.split(".")[0]
        ref = sd[f"{i}._packed_params._packed_params"][0].dequantize()
        assert qe.rel_error == pytest.approx(
            _metrics(model.state_dict()[qe.name], ref)[0], rel=1e-6
        )
    # the float bias, kept in the packed params, is compared under its float name: equal
    assert not any(d.name.endswith("bias") for d in report.changed)
    assert report.compared == 4


@contextlib.contextmanager
def _no_check() -> Iterator[None]:
    """Library warnings (torch.ao's deprecation, bitsandbytes' CPU kernels) silenced while building."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ GPTQ / AWQ


def _gptq_pack(
    intweight: torch.Tensor, zeros: torch.Tensor, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """AutoGPTQ's QuantLinear.pack: intweight [in, out] -> qweight [in·bits/32, out]; zeros [groups, out]
    stored minus one (v1) -> qzeros [groups, out·bits/32]. Line for line the loops of AutoGPTQ's
    qlinear `pack` (checked against its source text, 2026-12-08)."""
    iw = intweight.numpy().astype(np.uint32)
    qweight = np.zeros((iw.shape[0] // 32 * bits, iw.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + (32 // bits)):
            qweight[row] |= iw[j] << (bits * (j - i))
        i += 32 // bits
        row += 1
    z = (zeros - 1).numpy().astype(np.uint32)
    qzeros = np.zeros((z.shape[0], z.shape[1] // 32 * bits), dtype=np.uint32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + (32 // bits)):
            qzeros[:, col] |= z[:, j] << (bits * (j - i))
        i += 32 // bits
        col += 1
    return qweight.view(np.int32), qzeros.view(np.int32)


def _awq_pack(intweight: torch.Tensor, bits: int) -> np.ndarray:
    """AutoAWQ's WQLinear_GEMM.from_linear: intweight [in, out] -> [in, out·bits/32], AWQ's order
    (order_map [0, 2, 4, 6, 1, 3, 5, 7], checked against AutoAWQ's and GPTQModel's source text)."""
    iw = intweight.numpy().astype(np.uint32)
    pack = 32 // bits
    out = np.zeros((iw.shape[0], iw.shape[1] // pack), dtype=np.uint32)
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    for col in range(iw.shape[1] // pack):
        for i in range(pack):
            out[:, col] |= iw[:, col * pack + order_map[i]] << (i * bits)
    return out.view(np.int32)


@pytest.mark.parametrize("kind", ["gptq", "gptq-act-order", "awq"])
def test_gptq_and_awq_dequantise_to_their_formula(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    out, inp, group, bits = 64, 128, 32, 4
    groups = inp // group
    q = torch.randint(0, 16, (inp, out))
    zeros = torch.randint(1, 15, (groups, out))
    scales = torch.rand(groups, out, dtype=torch.float16) * 0.1 + 0.01
    g_idx = torch.arange(inp) // group
    if kind == "gptq-act-order":
        g_idx = g_idx[torch.randperm(inp)]
    expect = ((q - zeros[g_idx]).float() * scales[g_idx].float()).t()  # [out, in]
    if kind == "awq":
        tensors = {
            "l.qweight": torch.from_numpy(_awq_pack(q, bits)),
            "l.qzeros": torch.from_numpy(_awq_pack(zeros, bits)),
            "l.scales": scales,
        }
    else:
        qweight, qzeros = _gptq_pack(q, zeros, bits)
        tensors = {
            "l.qweight": torch.from_numpy(qweight),
            "l.qzeros": torch.from_numpy(qzeros),
            "l.scales": scales,
            "l.g_idx": g_idx.to(torch.int32),
        }
    save_file(tensors, str(tmp_path / "q.safetensors"))
    got = _read_all(tmp_path / "q.safetensors", "l.weight", chunk=1000)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    if kind == "gptq":  # GPTQModel's v2 checkpoints store the zeros themselves, not one less
        folder = tmp_path / "v2"
        folder.mkdir()
        v2 = dict(tensors, **{"l.qzeros": torch.from_numpy(_gptq_pack(q, zeros + 1, bits)[1])})
        save_file(v2, str(folder / "model.safetensors"))
        config = {"quant_method": "gptq", "bits": 4, "checkpoint_format": "gptq_v2"}
        (folder / "config.json").write_text(json.dumps({"quantization_config": config}))
        torch.testing.assert_close(_read_all(folder, "l.weight"), expect, rtol=0, atol=0)
    with open_source(str(tmp_path / "q.safetensors")) as src:
        view = dequantized(src)
        assert view is not None
        scheme = view.schemes["l.weight"]
    assert scheme.scheme == ("awq 4-bit g32" if kind == "awq" else "gptq 4-bit g32")
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert scheme.bits_per_weight == pytest.approx(stored * 8 / (out * inp))


# ------------------------------------------------------------------ compressed-tensors, FP8


def test_compressed_tensors_pack_quantized_as_its_decompressor(tmp_path: Path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    torch.manual_seed(0)
    weight = torch.randn(32, 128)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    scale = weight.reshape(32, 4, 32).abs().amax(-1) / 7
    packed = PackedQuantizationCompressor.compress(
        {"weight": weight, "weight_scale": scale}, scheme
    )
    ref = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    save_file({f"l.{k}": v for k, v in packed.items()}, str(tmp_path / "ct.safetensors"))
    got = _read_all(tmp_path / "ct.safetensors", "l.weight", chunk=999)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=0)


def test_fp8_block_scales(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out, inp, b = 200, 300, 128
    weight = torch.randn(out, inp).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(math.ceil(out / b), math.ceil(inp / b)) + 0.5
    expect = torch.empty(out, inp)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            block = weight[i * b : (i + 1) * b, j * b : (j + 1) * b].float()
            expect[i * b : (i + 1) * b, j * b : (j + 1) * b] = block * scale_inv[i, j]
    save_file(
        {"l.weight": weight, "l.weight_scale_inv": scale_inv}, str(tmp_path / "f.safetensors")
    )
    got = _read_all(tmp_path / "f.safetensors", "l.weight", chunk=4096)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


# ------------------------------------------------------------------ bitsandbytes through transformers


@pytest.fixture(scope="module")
def bnb_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    pytest.importorskip("bitsandbytes")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("bnb")
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "float")
    configs: dict[str, dict[str, object]] = {
        "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "fp4-double": dict(
            load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True
        ),
        "int8": dict(load_in_8bit=True),
    }
    models: dict[str, object] = {}
    for name, kwargs in configs.items():
        try:
            with _no_check():
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    root / "float",
                    quantization_config=transformers.BitsAndBytesConfig(**kwargs),
                    device_map="cpu",
                )
                model.save_pretrained(root / name)
        except Exception as exc:
            pytest.skip(f"bitsandbytes cannot quantize on this CPU: {exc}")
        models[name] = model
    return root, models


@pytest.mark.parametrize("name", ["nf4", "fp4-double", "int8"])
def test_bitsandbytes_as_bitsandbytes_dequantises(
    bnb_models: tuple[Path, dict[str, object]], name: str
) -> None:
    import bitsandbytes.functional as bf

    root, models = bnb_models
    model = models[name]
    layer = model.model.layers[0].self_attn.q_proj  # type: ignore[attr-defined]
    if name == "int8":
        ref = layer.weight.data.float() * layer.weight.SCB.float().unsqueeze(1) / 127
    else:
        ref = bf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    got = _read_all(
        root / name / "model.safetensors", "model.layers.0.self_attn.q_proj.weight", 100
    )
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    with open_source(str(root / "float")) as a, open_source(str(root / name)) as b:
        report = diff_sources(a, b)
    assert report.dequantized == "b" and report.only_in_b == () and report.only_in_a == ()
    assert len(report.quantization) == 7  # q, k, v, o, gate, up, down


def test_a_gguf_against_its_hugging_face_checkpoint_is_matched_by_hf_names(tmp_path: Path) -> None:
    from modinspect.commands.diff import DiffRequest, run_diff
    from modinspect.sources.gguf_names import hf_name

    gguf_path = ggufs.llama(tmp_path / "tiny.gguf", blocks=1)
    floats = {
        str(hf_name(name, "llama", 1)): torch.zeros(shape)
        for name, shape, _t in ggufs.llama_tensors(1)
    }
    save_file(floats, str(tmp_path / "hf.safetensors"))
    report = run_diff(DiffRequest(str(tmp_path / "hf.safetensors"), str(gguf_path)))
    assert report.only_in_a == () and report.only_in_b == () and report.compared == 12
    assert report.hints[-1] == (
        "B's GGUF tensor names were matched under the Hugging Face names of the checkpoint it was "
        "converted from (as --hf-names does)"
    )
    assert report.dequantized == "b"
    assert {q.name for q in report.quantization} == {
        n
        for n, (_s, t) in zip(floats, [(s, t) for _n, s, t in ggufs.llama_tensors(1)], strict=True)
        if t not in (T.F32, T.BF16)
    }


def test_a_quantized_tensor_streams_in_chunks_of_the_size_asked(tmp_path: Path) -> None:
    path = ggufs.write(tmp_path / "q.gguf", [("w", (40, 512), T.Q8_0)])
    with open_source(str(path)) as src:
        view = dequantized(src)
        assert view is not None
        sizes = [c.numel() for c in view.iter_chunks("w", 3000)]
        assert view.byte_range("w") is None  # values, not bytes: never compared as the file's bytes
    assert sizes == [3000] * 6 + [40 * 512 - 18000]


def test_torch_ao_in_a_torchscript_archive(tmp_path: Path) -> None:
    """quantize_dynamic's model scripted: its packed params, read from __setstate__'s state as data."""
    from torch.ao.quantization import quantize_dynamic

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    with _no_check():
        q = quantize_dynamic(model, {torch.nn.Linear})  # type: ignore[no-untyped-call]
        torch.jit.save(torch.jit.script(q), str(tmp_path / "q.pt"))
    torch.save(model.state_dict(), tmp_path / "f.pt")
    with open_source(str(tmp_path / "f.pt")) as a, open_source(str(tmp_path / "q.pt")) as b:
        report = diff_sources(a, b)
    assert report.only_in_a == () and report.only_in_b == ()
    sd = q.state_dict()
    for qe in report.quantization:
        i = qe.name.split(".")[0]
        ref = sd[f"{i}._packed_params._packed_params"][0].dequantize()
        assert qe.scheme == "qint8 per-tensor"
        assert qe.rel_error == pytest.approx(
            _metrics(model.state_dict()[qe.name], ref)[0], rel=1e-6
        )
    assert sorted(qe.name for qe in report.quantization) == ["0.weight", "2.weight"]


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [("int", "channel"), ("int", "group"), ("float", "channel"), ("float", "tensor")],
)
def test_compressed_tensors_8_bit_formats_as_its_decompressor(
    tmp_path: Path, kind: str, strategy: str
) -> None:
    from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    torch.manual_seed(0)
    weight = torch.randn(32, 128)
    group = 32 if strategy == "group" else None
    args = QuantizationArgs(
        num_bits=8, type=kind, symmetric=True, strategy=strategy, group_size=group
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    top = 127.0 if kind == "int" else 448.0
    if strategy == "tensor":
        scale = weight.abs().amax().reshape(1) / top
    elif strategy == "channel":
        scale = weight.abs().amax(-1, keepdim=True) / top
    else:
        scale = weight.reshape(32, 4, 32).abs().amax(-1) / top
    stored = NaiveQuantizationCompressor.compress({"weight": weight, "weight_scale": scale}, scheme)
    ref = NaiveQuantizationCompressor.decompress(dict(stored), scheme)["weight"]
    save_file({f"l.{k}": v for k, v in stored.items()}, str(tmp_path / "ct.safetensors"))
    got = _read_all(tmp_path / "ct.safetensors", "l.weight", chunk=1000)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=0)
