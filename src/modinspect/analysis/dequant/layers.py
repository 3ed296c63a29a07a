"""Each quantized layer analysis/quant.py finds, as a function of rows of its float weight.

`layer_rows` reads nothing until the row function is made (`make()`): then it reads the layer's stored
tensors (packed weight and auxiliaries: a fraction of the float weight's size), checks every shape against
the others, and returns `rows(r0, r1)`, float32 rows of the logical weight, dequantised by the pure functions
of families.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from modinspect.analysis.dequant import families as fam
from modinspect.analysis.quant import BNB_BLOB, MAX_BLOB_BYTES
from modinspect.errors import CorruptFileError, UsageError
from modinspect.reports import QuantLayer
from modinspect.sources.base import Source

if TYPE_CHECKING:
    import torch

Rows = Callable[[int, int], "torch.Tensor"]
Make = Callable[[], Rows]
MAX_BLOCK = 1 << 16  # bitsandbytes blocks are 32..4096 elements; FP8 blocks 128


def layer_rows(
    source: Source, layer: QuantLayer, config: Mapping[str, Any], names: set[str]
) -> tuple[str, Make]:
    """(the float weight's name, a maker of its row function) for one quantized layer; `names`: the
    source's tensor names."""
    p = layer.module + "." if layer.module else ""
    scheme = layer.scheme
    bits_found = re.search(r"(\d+)-bit", scheme)
    bits = int(bits_found.group(1)) if bits_found else 0

    def get(short: str) -> torch.Tensor | None:
        name = p + short
        return source.read_tensor(name) if name in names else None

    def need(short: str) -> torch.Tensor:
        t = get(short)
        if t is None:
            raise CorruptFileError(f"{source.label}: {layer.module!r} ({scheme}) has no {short!r}")
        return t

    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{source.label}: {layer.module!r} ({scheme}) {what}")

    out, inp = (layer.shape[0], math.prod(layer.shape[1:])) if layer.shape else (1, 1)
    kind = scheme.split(" ")[0]
    if kind in ("gptq", "awq"):
        if bits not in (2, 4, 8):
            raise UsageError(
                f"{source.label}: {layer.module!r} is {scheme}; modinspect dequantizes 2-, 4- and 8-bit "
                "GPTQ/AWQ only"
            )
        make = (
            _gptq(need, get, bad, bits, out, inp, config)
            if kind == "gptq"
            else _awq(need, bad, bits, out, inp)
        )
        return p + "weight", make
    if scheme.startswith("bnb int8"):
        return p + "weight", _bnb8(need, bad, out, inp)
    if kind == "bnb":
        return p + "weight", _bnb4(source, layer, need, get, bad)
    if scheme.startswith("compressed-tensors pack-quantized"):
        return p + "weight", _packed(need, get, bad, bits, out, inp)
    if any(a.endswith("weight_scale_inv") for a in layer.aux):
        edges = re.search(r"block (\d+)×(\d+)", scheme)
        block = (int(edges.group(1)), int(edges.group(2))) if edges else None
        return p + "weight", _fp8_block(need, bad, out, inp, block)
    if kind in ("int8", "fp8"):
        return p + "weight", _scaled(need, get, bad, out, inp)
    if kind in ("qint8", "quint8", "qint32", "quint4x2"):
        return p + "weight", _ao(source, layer.weight, out, inp)
    if kind == "torchao":
        return layer.weight, _torchao(source, layer, out, inp, bad)
    raise UsageError(
        f"{source.label}: {layer.module!r} is {scheme}, which modinspect does not dequantize"
    )


Get = Callable[[str], "torch.Tensor | None"]
Need = Callable[[str], "torch.Tensor"]
Bad = Callable[[str], CorruptFileError]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _gptq(
    need: Need, get: Get, bad: Bad, bits: int, out: int, inp: int, config: Mapping[str, Any]
) -> Make:
    def make() -> Rows:
        import torch

        qweight, qzeros, scales = need("qweight"), need("qzeros"), need("scales")
        _integers(bad, qweight=qweight, qzeros=qzeros)
        per = 32 // bits
        if _shape(qweight) != (inp // per, out) or inp % per:
            raise bad(f"has qweight {list(qweight.shape)}, not [{inp // per}, {out}]")
        groups = scales.shape[0] if scales.dim() == 2 else 0
        if scales.dim() != 2 or scales.shape[1] != out or not 0 < groups <= inp:
            raise bad(f"has scales {list(scales.shape)}, not [groups ≤ {inp}, {out}]")
        if _shape(qzeros) != (groups, -(-out // per)) or out % per:
            raise bad(f"has qzeros {list(qzeros.shape)}, not [{groups}, {out // per}]")
        g_idx = get("g_idx")
        if g_idx is None:
            if inp % groups:
                raise bad(f"has {groups} groups, which do not divide its {inp} inputs")
            g_idx = torch.arange(inp) // (inp // groups)
        _integers(bad, g_idx=g_idx)
        g_idx = g_idx.to(torch.int64)
        if _shape(g_idx) != (inp,):
            raise bad(f"has g_idx {list(g_idx.shape)}, not [{inp}]")
        if inp and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
            raise bad(f"has g_idx values outside its {groups} groups")
        v1 = str(config.get("checkpoint_format", "gptq")).lower() != "gptq_v2"
        return lambda r0, r1: fam.gptq_rows(qweight, qzeros, scales, g_idx, bits, r0, r1, v1)

    return make


def _awq(need: Need, bad: Bad, bits: int, out: int, inp: int) -> Make:
    def make() -> Rows:
        qweight, qzeros, scales = need("qweight"), need("qzeros"), need("scales")
        _integers(bad, qweight=qweight, qzeros=qzeros)
        per = 32 // bits
        if _shape(qweight) != (inp, out // per) or out % per:
            raise bad(f"has qweight {list(qweight.shape)}, not [{inp}, {out // per}]")
        groups = scales.shape[0] if scales.dim() == 2 else 0
        if scales.dim() != 2 or scales.shape[1] != out or not groups or inp % groups:
            raise bad(
                f"has scales {list(scales.shape)}: groups that do not divide its {inp} inputs"
            )
        if _shape(qzeros) != (groups, out // per):
            raise bad(f"has qzeros {list(qzeros.shape)}, not [{groups}, {out // per}]")
        return lambda r0, r1: fam.awq_rows(qweight, qzeros, scales, bits, r0, r1)

    return make


def _bnb8(need: Need, bad: Bad, out: int, inp: int) -> Make:
    def make() -> Rows:
        weight, scb = need("weight"), need("SCB")
        if _shape(weight) != (out, inp) or scb.numel() != out:
            raise bad(f"has SCB of {scb.numel():,} scales for {out:,} rows")
        return lambda r0, r1: fam.bnb8_rows(weight, scb.reshape(-1), r0, r1)

    return make


def _bnb4(source: Source, layer: QuantLayer, need: Need, get: Get, bad: Bad) -> Make:
    def make() -> Rows:
        import torch

        state = _blob(source, layer, bad)
        numel = math.prod(layer.shape)
        packed, absmax, qmap = need("weight"), need("weight.absmax"), need("weight.quant_map")
        if packed.dtype != torch.uint8:
            raise bad(
                f"stores its 4-bit codes as {str(packed.dtype).removeprefix('torch.')}, not uint8"
            )
        blocksize = state.get("blocksize", 64)
        if not isinstance(blocksize, int) or not 0 < blocksize <= MAX_BLOCK:
            raise bad(f"declares a block size of {str(blocksize)[:40]}")
        if packed.numel() * 2 < numel or qmap.numel() != 16:
            raise bad(f"holds {packed.numel() * 2:,} 4-bit codes for {numel:,} weights")
        if absmax.numel() != -(-numel // blocksize):
            raise bad(
                f"has {absmax.numel():,} absmax for {-(-numel // blocksize):,} blocks of {blocksize}"
            )
        if absmax.dtype == torch.uint8:
            nested_absmax, nested_map = (
                need("weight.nested_absmax"),
                need("weight.nested_quant_map"),
            )
            nested = state.get("nested_blocksize", 256)
            offset = state.get("nested_offset", 0.0)
            if (
                not isinstance(nested, int)
                or not 0 < nested <= MAX_BLOCK
                or nested_map.numel() != 256
            ):
                raise bad(f"declares a nested block size of {str(nested)[:40]}")
            if not isinstance(offset, (int, float)):
                raise bad("declares a nested offset that is not a number")
            absmax = fam.bnb_nested_absmax(absmax, nested_absmax, nested_map, nested, float(offset))
        cols = layer.shape[-1] if layer.shape else 1
        flat_absmax = absmax.reshape(-1).to(torch.float32)
        return lambda r0, r1: fam.bnb4_flat(
            packed, flat_absmax, qmap, blocksize, r0 * cols, r1 * cols
        )

    return make


def _blob(source: Source, layer: QuantLayer, bad: Bad) -> dict[str, Any]:
    name = next((a for a in layer.aux if BNB_BLOB in a), None)
    if name is None:
        return {}
    t = source.read_tensor(name)
    if t.numel() > MAX_BLOB_BYTES:
        raise bad(f"has a quant_state of {t.numel():,} bytes")
    try:
        value = json.loads(bytes(t.reshape(-1).tolist()))
    except (ValueError, RecursionError):
        raise bad("has a quant_state that is not JSON") from None
    if not isinstance(value, dict):
        raise bad("has a quant_state that is not a JSON object")
    return value


def _packed(need: Need, get: Get, bad: Bad, bits: int, out: int, inp: int) -> Make:
    def make() -> Rows:
        packed, scale, zero = need("weight_packed"), need("weight_scale"), get("weight_zero_point")
        per = 32 // bits
        if bits not in (2, 4, 8) or _shape(packed) != (out, -(-inp // per)):
            raise bad(f"has weight_packed {list(packed.shape)}, not [{out}, {-(-inp // per)}]")
        _check_scale(scale, out, inp, bad)
        if zero is not None and zero.shape != scale.shape:
            raise UsageError(
                f"{bad('').args[0]}has a packed zero point, which modinspect does not dequantize"
            )
        return lambda r0, r1: fam.pack_quantized_rows(packed, scale, zero, inp, bits, r0, r1)

    return make


def _integers(bad: Bad, **tensors: torch.Tensor) -> None:
    """Packed words, zeros and group indices are integers; anything else is not what the scheme writes."""
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex() or t.dtype == _bool():
            raise bad(f"stores {name} as {str(t.dtype).removeprefix('torch.')}, not integers")


def _bool() -> torch.dtype:
    import torch

    return torch.bool


def _check_scale(scale: torch.Tensor, out: int, inp: int, bad: Bad) -> None:
    groups = scale.shape[1] if scale.dim() == 2 else 1
    fits = scale.numel() in (1, out) or (
        scale.dim() == 2 and scale.shape[0] == out and 0 < groups <= inp
    )
    if not fits:
        raise bad(f"has weight_scale {list(scale.shape)}, which fits no grouping of [{out}, {inp}]")


def _scaled_rows(
    what: str,
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    out: int,
    inp: int,
    bad: Bad,
) -> Rows:
    """`(weight - zero) * scale` by rows, once the weight (named `what` in the file), its scales and its zero
    points are checked to fit [out, inp] and each other."""
    if _shape(weight) != (out, inp):
        raise bad(f"has {what} {list(weight.shape)}, not [{out}, {inp}]")
    _check_scale(scale, out, inp, bad)
    if zero is not None and zero.numel() != 1 and zero.shape != scale.shape:
        raise bad(f"has zero points {list(zero.shape)} for scales {list(scale.shape)}")
    return lambda r0, r1: fam.scaled_rows(weight, scale, zero, r0, r1)


def _scaled(need: Need, get: Get, bad: Bad, out: int, inp: int) -> Make:
    def make() -> Rows:
        weight, scale, zero = need("weight"), need("weight_scale"), get("weight_zero_point")
        return _scaled_rows("weight", weight, scale, zero, out, inp, bad)

    return make


def _fp8_block(need: Need, bad: Bad, out: int, inp: int, block: tuple[int, int] | None) -> Make:
    def make() -> Rows:
        weight, scale_inv = need("weight"), need("weight_scale_inv")
        if scale_inv.dim() != 2 or not all(scale_inv.shape):
            raise bad(f"has weight_scale_inv {list(scale_inv.shape)}, not one scale per 2-D block")
        b0, b1 = block or (-(-out // scale_inv.shape[0]), -(-inp // scale_inv.shape[1]))
        if not (b0 > 0 and b1 > 0):
            raise bad(f"declares blocks of {b0}×{b1}")
        if (-(-out // b0), -(-inp // b1)) != _shape(scale_inv) or max(b0, b1) > MAX_BLOCK:
            raise bad(
                f"has weight_scale_inv {list(scale_inv.shape)}, which tiles [{out}, {inp}] in no blocks"
            )
        return lambda r0, r1: fam.fp8_block_rows(weight, scale_inv, (b0, b1), r0, r1)

    return make


def _torchao(source: Source, layer: QuantLayer, out: int, inp: int, bad: Bad) -> Make:
    """A torchao tensor subclass's `(qdata - zero_point) * scale`, per channel or group, from its inner
    tensors as the pickle holds them (the subclass is never built)."""

    def make() -> Rows:
        read = getattr(source, "read_subclass_part", None)
        sub = source.info(layer.weight).subclass
        parts = {attr for attr, _, _ in sub.parts} if sub is not None else set()
        if read is None or not {"qdata", "scale"} <= parts:
            raise bad("has no qdata and scale to dequantize")
        weight, scale = read(layer.weight, "qdata"), read(layer.weight, "scale")
        zero = read(layer.weight, "zero_point") if "zero_point" in parts else None
        return _scaled_rows("qdata", weight, scale, zero, out, inp, bad)

    return make


def _ao(source: Source, name: str, out: int, inp: int) -> Make:
    def make() -> Rows:
        t = source.read_tensor(name)
        if not getattr(t, "is_quantized", False):
            raise CorruptFileError(f"{source.label}: {name!r} is not a quantized tensor")
        values = fam.ao_dequantize(t).reshape(out, inp)
        return lambda r0, r1: values[r0:r1]

    return make
