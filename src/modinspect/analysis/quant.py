"""Quantized layers in a state dict: which scheme, how many parameters they stand for, what they store.

`detect_quantization` is pure: it looks at names, dtypes and shapes (plus config.json's
`quantization_config` when the source is a directory) and finds, per layer, the packed weight, the
auxiliary tensors beside it (scales, zeros, group indices, absmax, ...), the logical shape of the weight the
layer had before quantization and the scheme's short name. The layouts, as their writers lay them out:

- GPTQ (AutoGPTQ / GPTQModel / optimum): `qweight` int32 [in * bits / 32, out] (packed along the input
  rows), `qzeros` int32 [groups, out * bits / 32], `scales` [groups, out], `g_idx` int32 [in].
- AWQ (AutoAWQ GEMM): `qweight` int32 [in, out * bits / 32] (packed along the output columns, in AWQ's
  order), `qzeros` int32 [groups, out * bits / 32], `scales` [groups, out].
- bitsandbytes 4-bit (transformers' save_pretrained): `weight` uint8 holding two 4-bit values a byte, with
  `weight.absmax`, `weight.quant_map`, `weight.nested_*` and `weight.quant_state.bitsandbytes__nf4|fp4`, a
  JSON blob that records the original shape. 8-bit: `weight` int8 at its logical shape, `SCB`, `weight_format`.
- compressed-tensors pack-quantized: `weight_packed` int32 [out, in * bits / 32], `weight_scale`,
  `weight_shape`, `weight_zero_point`, `weight_g_idx`; its int/float-quantized formats keep an 8-bit
  `weight` at its logical shape beside `weight_scale`.
- FP8 with block scales (DeepSeek-V3 style): `weight` float8_e4m3fn, `weight_scale_inv` [ceil(out / b),
  ceil(in / b)].
- torch.ao quantized modules' state dicts: Linear's `_packed_params._packed_params` (the qint8 weight and
  the float bias, as `.0` and `.1`), `scale`, `zero_point`; the convolutions (Conv1d/2d/3d, ConvTranspose,
  the fused ConvReLU / ConvAdd) unpack theirs to a quantized `weight` and a float `bias` (None without
  one) beside `scale` and `zero_point`. A QuantStub's `Quantize` holds only `scale` and `zero_point`: the
  input's quantization, auxiliary too.
- torchao tensor subclasses in pickles (`Int8Tensor`, `Float8Tensor`, ... after `quantize_`): one entry
  at the float weight's shape holding `qdata`, `scale`, `zero_point` and a `block_size`, described by the
  pickle gate without constructing the class (`sources/pickle/refs.SubclassRef`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modinspect.reports import QuantLayer
from modinspect.sources.base import Source, SubclassInfo, TensorInfo

BNB_BLOB = "weight.quant_state.bitsandbytes__"
MAX_BLOB_BYTES = 1 << 16  # a quant_state blob is ~100 bytes of JSON
MAX_BLOBS_BYTES = 1 << 24  # in all: a 60k-layer model's blobs are about 10 MB

_FLOAT8 = {
    "float8_e4m3fn": "e4m3",
    "float8_e4m3fnuz": "e4m3",
    "float8_e5m2": "e5m2",
    "float8_e5m2fnuz": "e5m2",
}


@dataclass(frozen=True)
class QuantScan:
    """Every quantized layer found, and each tensor's part in it."""

    layers: tuple[QuantLayer, ...]
    logical: dict[str, tuple[int, ...]]  # packed weight name -> the shape it stands for
    aux: dict[str, str]  # auxiliary tensor name -> its layer's scheme
    schemes: dict[str, str]  # packed weight name -> its layer's scheme

    def __bool__(self) -> bool:
        return bool(self.layers)


def scan_quantization(source: Source) -> QuantScan:
    """`detect_quantization` of a source, reading bitsandbytes' small quant_state blobs for their shapes."""
    config = getattr(source, "quantization_config", None)
    names = [t.name for t in source.tensors if BNB_BLOB in t.name]
    blobs = _read_blobs(source, names) if names else {}
    return detect_quantization(
        source.tensors, config if isinstance(config, Mapping) else None, blobs
    )


def _read_blobs(source: Source, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each quant_state blob's JSON, read as bytes (no torch), each file opened once, MAX_BLOBS_BYTES in all;
    a blob that cannot be read that way, or does not parse to an object, is left out (its layer falls back
    to the element count its packed bytes hold)."""
    try:
        ranges = source.byte_ranges(names)
    except (KeyError, NotImplementedError):
        return {}
    budget = MAX_BLOBS_BYTES
    blobs: dict[str, dict[str, Any]] = {}
    files: dict[Path, BinaryIO] = {}
    try:
        for name, where in zip(names, ranges, strict=True):
            if where is None or where[2] > MAX_BLOB_BYTES or where[2] > budget:
                continue
            path, offset, nbytes = where
            budget -= nbytes
            try:
                f = files.get(path) or files.setdefault(path, open(path, "rb"))  # noqa: SIM115
                f.seek(offset)
                value = json.loads(f.read(nbytes))
            except (OSError, ValueError, RecursionError):  # RecursionError: a blob of 64k '['
                continue
            if isinstance(value, dict):
                blobs[name] = value
    finally:
        for f in files.values():
            f.close()
    return blobs


def detect_quantization(
    tensors: list[TensorInfo],
    config: Mapping[str, Any] | None = None,
    blobs: Mapping[str, Mapping[str, Any]] | None = None,
) -> QuantScan:
    """The quantized layers among `tensors`, grouped by module; an empty scan for a float checkpoint."""
    if not any(
        t.name.rpartition(".")[2] in _MARKERS
        or "_packed_params" in t.name
        or t.dtype in _AO_DTYPES
        or t.subclass is not None
        for t in tensors
    ):
        return QuantScan((), {}, {}, {})
    by_module: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        module, short = _split(t.name)
        by_module.setdefault(module, {})[short] = t
    found = [
        layer
        for module, own in by_module.items()
        if (layer := _layer(module, own, config or {}, blobs or {})) is not None
    ]
    logical = {lay.weight: lay.shape for lay in found}
    aux = {a: lay.scheme for lay in found for a in lay.aux}
    if any(lay.scheme.partition(" ")[0] in _AO_DTYPES for lay in found):  # torch.ao's
        layers = {lay.module for lay in found}
        for (
            module,
            own,
        ) in by_module.items():  # QuantStub's Quantize: the input's scale and zero point
            if module not in layers and own.keys() == {"scale", "zero_point"}:
                aux.update(dict.fromkeys((_prefix(module) + n for n in own), "torch.ao input"))
    return QuantScan(tuple(found), logical, aux, {lay.weight: lay.scheme for lay in found})


def _split(name: str) -> tuple[str, str]:
    """(layer module, the tensor's name inside it): bitsandbytes' and torch.ao's names are dotted inside the layer."""
    if (
        "weight." not in name and "_packed_params" not in name
    ):  # most names: the module is all but the last part
        module, _, short = name.rpartition(".")
        return module, short
    at = name.find("weight.quant_state.")
    if at == 0 or (at > 0 and name[at - 1] == "."):
        return name[: max(at - 1, 0)], name[at:]
    for suffix in _NESTED:
        if name.endswith(suffix) and (len(name) == len(suffix) or name[-len(suffix) - 1] == "."):
            return name[: max(len(name) - len(suffix) - 1, 0)], suffix
    module, _, short = name.rpartition(".")
    return module, short


def _layer(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    for detector in _DETECTORS:
        layer = detector(module, own, config, blobs)
        if layer is not None:
            return layer
    return None


def _prefix(module: str) -> str:
    return module + "." if module else ""


def _make(
    module: str,
    own: dict[str, TensorInfo],
    weight: str,
    scheme: str,
    shape: tuple[int, ...],
    aux: list[str],
) -> QuantLayer:
    p = _prefix(module)
    kept = tuple(p + a for a in aux if a in own)
    nbytes = own[weight].nbytes + sum(own[a].nbytes for a in aux if a in own)
    return QuantLayer(module, scheme, p + weight, shape, kept, nbytes)


def _bits(config: Mapping[str, Any], default: int) -> int:
    bits = config.get("bits", config.get("w_bit"))
    return bits if isinstance(bits, int) and bits in (2, 3, 4, 8) else default


def _group(rows: int, groups: int, config: Mapping[str, Any]) -> str:
    size = config.get("group_size", config.get("q_group_size"))
    if isinstance(size, int) and size > 0:
        return f" g{size}"
    if groups > 1 and rows % groups == 0:
        return f" g{rows // groups}"
    return " per-channel" if groups == 1 else ""


def _gptq_awq(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    qweight, scales = own.get("qweight"), own.get("scales")
    if (
        qweight is None
        or scales is None
        or qweight.dtype != "int32"
        or len(qweight.shape) != 2
        or len(scales.shape) != 2
    ):
        return None
    method = str(config.get("quant_method", "")).lower()
    aux = ["qzeros", "scales", "g_idx"]
    rows, cols = qweight.shape
    out = scales.shape[1]
    if cols == out and method != "awq":  # GPTQ: packed along the input rows
        g_idx, qzeros = own.get("g_idx"), own.get("qzeros")
        if (
            g_idx is not None
            and len(g_idx.shape) == 1
            and g_idx.shape[0]
            and (32 * rows) % g_idx.shape[0] == 0
        ):
            bits = 32 * rows // g_idx.shape[0]
        elif (
            qzeros is not None
            and len(qzeros.shape) == 2
            and out
            and (32 * qzeros.shape[1]) % out == 0
        ):
            bits = 32 * qzeros.shape[1] // out
        else:
            bits = _bits(config, 4)
        if bits not in (2, 3, 4, 8) or (rows * 32) % bits:
            return None
        inputs = rows * 32 // bits
        return _make(
            module,
            own,
            "qweight",
            f"gptq {bits}-bit{_group(inputs, scales.shape[0], config)}",
            (out, inputs),
            aux,
        )
    if (
        out and (32 * cols) % out == 0 and 32 * cols // out in (2, 4, 8)
    ):  # AWQ: packed along the output columns
        bits = 32 * cols // out
        return _make(
            module,
            own,
            "qweight",
            f"awq {bits}-bit{_group(rows, scales.shape[0], config)}",
            (out, rows),
            aux,
        )
    return None


def _bnb(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    weight = own.get("weight")
    if weight is None:
        return None
    p = _prefix(module)
    states = [s for s in own if s.startswith("weight.quant_state.")]
    if "weight.absmax" in own and weight.dtype in (
        "uint8",
        "int8",
        "float16",
        "bfloat16",
        "float32",
    ):
        kind = next((s.rpartition("__")[2] for s in states if s.startswith(BNB_BLOB)), "") or str(
            config.get("bnb_4bit_quant_type", "nf4")
        )
        blob = next((blobs[p + s] for s in states if p + s in blobs), {})
        shape = blob.get("shape")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and math.prod(shape) <= weight.nbytes * 2
        ):
            shape = [weight.nbytes * 2]
        nested = " double-quant" if "weight.nested_absmax" in own else ""
        aux = [
            "weight.absmax",
            "weight.quant_map",
            "weight.nested_absmax",
            "weight.nested_quant_map",
            *states,
        ]
        return _make(module, own, "weight", f"bnb {kind}{nested}", tuple(shape), aux)
    if "SCB" in own and weight.dtype == "int8":
        return _make(module, own, "weight", "bnb int8", weight.shape, ["SCB", "weight_format"])
    return None


def _compressed(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    packed, scale = own.get("weight_packed"), own.get("weight_scale")
    aux = [
        "weight_scale",
        "weight_zero_point",
        "weight_shape",
        "weight_g_idx",
        "weight_global_scale",
    ]
    if packed is not None and packed.dtype == "int32" and len(packed.shape) == 2:
        bits = _ct_bits(config)
        rows, cols = packed.shape
        inputs = cols * 32 // bits
        groups = scale.shape[1] if scale is not None and len(scale.shape) == 2 else 0
        return _make(
            module,
            own,
            "weight_packed",
            f"compressed-tensors pack-quantized {bits}-bit{_group(inputs, groups, {})}",
            (rows, inputs),
            aux,
        )
    weight = own.get("weight")
    if (
        weight is None
        or scale is None
        or weight.dtype not in ("int8", *_FLOAT8)
        or len(weight.shape) != 2
    ):
        return None
    kind = "int8" if weight.dtype == "int8" else f"fp8 {_FLOAT8[weight.dtype]}"
    if math.prod(scale.shape) == 1:
        grain = " per-tensor"
    elif len(scale.shape) == 2 and scale.shape[0] == weight.shape[0]:
        grain = _group(weight.shape[1], scale.shape[1], {})
    else:
        grain = ""
    return _make(module, own, "weight", f"{kind}{grain}", weight.shape, aux)


def _ct_bits(config: Mapping[str, Any]) -> int:
    groups = config.get("config_groups")
    if isinstance(groups, Mapping):
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, Mapping) else None
            bits = weights.get("num_bits") if isinstance(weights, Mapping) else None
            if isinstance(bits, int) and bits in (2, 4, 8):
                return bits
    return 4


def _fp8_block(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    weight, scale = own.get("weight"), own.get("weight_scale_inv")
    if weight is None or scale is None or weight.dtype not in _FLOAT8 or len(weight.shape) != 2:
        return None
    block = config.get("weight_block_size")
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) for b in block)):
        block = [
            _block_edge(weight.shape[i], scale.shape[i]) if len(scale.shape) == 2 else 0
            for i in (0, 1)
        ]
        for i in (
            0,
            1,
        ):  # one block along a side fits any edge as long: square blocks, as DeepSeek-V3's
            if len(scale.shape) == 2 and scale.shape[i] == 1 and block[1 - i] >= weight.shape[i]:
                block[i] = block[1 - i]
    grain = f" block {block[0]}×{block[1]}" if all(block) else ""
    return _make(
        module,
        own,
        "weight",
        f"fp8 {_FLOAT8[weight.dtype]}{grain}",
        weight.shape,
        ["weight_scale_inv"],
    )


def _block_edge(size: int, blocks: int) -> int:
    """The block edge b with ceil(size / b) == blocks, as a power of two (128 in DeepSeek-V3)."""
    if blocks <= 0:
        return 0
    edge = 1
    while edge < size and -(-size // edge) > blocks:
        edge *= 2
    return edge if -(-size // edge) == blocks else 0


def _torch_ao(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    """Linear's packed weight, or a convolution's quantized `weight`."""
    for name in (_AO_WEIGHT, "weight"):
        weight = own.get(name)
        if weight is not None and weight.dtype in _AO_DTYPES:
            break
    else:
        return None
    qscheme = weight.qscheme or ""
    grain = " per-channel" if "channel" in qscheme else " per-tensor" if "tensor" in qscheme else ""
    return _make(module, own, name, weight.dtype + grain, weight.shape, ["scale", "zero_point"])


def _torchao(
    module: str,
    own: dict[str, TensorInfo],
    config: Mapping[str, Any],
    blobs: Mapping[str, Mapping[str, Any]],
) -> QuantLayer | None:
    """A torchao tensor subclass (Int8Tensor, Float8Tensor, ...), as the pickle gate described it: one tensor
    at the float layer's shape whose bytes are its inner tensors' (qdata, scale, zero_point, ...)."""
    for name, weight in own.items():
        sub = weight.subclass
        if sub is not None and sub.cls.startswith("torchao."):
            return _make(module, own, name, _torchao_scheme(weight, sub), weight.shape, [])
    return None


def _torchao_scheme(weight: TensorInfo, sub: SubclassInfo) -> str:
    """'torchao int8 weight-only per-channel', 'torchao fp8 e4m3 dynamic-activation per-tensor', ..."""
    short = sub.cls.rpartition(".")[2]
    stored = sub.target_dtype or (sub.parts[0][2] if sub.parts else weight.dtype)
    if stored in _FLOAT8:
        kind = f"fp8 {_FLOAT8[stored]}"
    elif short.startswith("Int4"):
        kind = "int4"
    elif stored.removeprefix("u").startswith(
        "int"
    ):  # int8, int4 (IntxUnpackedToInt8Tensor), uint4, ...
        kind = stored
    else:
        kind = short
    mode = "dynamic-activation" if sub.activation else "weight-only"
    block, shape = sub.block_size, weight.shape
    if block is None or len(block) != len(shape) or not shape:
        grain = ""
    elif tuple(block) == shape:
        grain = " per-tensor"
    elif all(b == 1 for b in block[:-1]) and block[-1] == shape[-1]:
        grain = " per-channel"
    elif all(b == 1 for b in block[:-1]):
        grain = f" g{block[-1]}"
    else:
        grain = " block " + "×".join(str(b) for b in block)
    return f"torchao {kind} {mode}{grain}"


_DETECTORS: tuple[
    Callable[
        [str, dict[str, TensorInfo], Mapping[str, Any], Mapping[str, Mapping[str, Any]]],
        QuantLayer | None,
    ],
    ...,
] = (_torchao, _gptq_awq, _bnb, _compressed, _fp8_block, _torch_ao)
# A module holding one of these is looked at; the detectors decide.
_MARKERS = frozenset(
    {"qweight", "absmax", "SCB", "weight_packed", "weight_scale", "weight_scale_inv"}
)
_AO_WEIGHT = "_packed_params._packed_params.0"
_AO_DTYPES = frozenset({"qint8", "quint8", "qint32", "quint4x2", "quint2x4"})
_NESTED = (
    "weight.absmax",
    "weight.quant_map",
    "weight.nested_absmax",
    "weight.nested_quant_map",
    _AO_WEIGHT,
    "_packed_params._packed_params.1",
)
