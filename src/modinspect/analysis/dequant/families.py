"""Dequantisation of the quantized checkpoints' layers, one pure torch function per scheme.

Each returns float32 rows [r0, r1) of the layer's logical weight ([out, in], the float layer's), from the
stored tensors as the scheme's writer lays them out (see analysis/quant.py for the layouts):

- GPTQ (AutoGPTQ's `QuantLinear.pack`): `qweight` int32 [in·bits/32, out], input row 32/bits·r + k at bits
  k·bits of word row r; `qzeros` packed the same way along the columns; w = scale[g] · (q − z − 1) in
  AutoGPTQ's v1 checkpoints (the zero stored one less), (q − z) in GPTQModel's `gptq_v2`; g = g_idx[i].
- AWQ (AutoAWQ's `WQLinear_GEMM.from_linear`): `qweight` int32 [in, out·bits/32], column 8c + ORDER[k] at
  bits k·4 of word column c (ORDER = 0 2 4 6 1 3 5 7); w = scale[i // group] · (q − z).
- compressed-tensors pack-quantized (`pack_to_int32`): `weight_packed` int32 [out, in·bits/32], value k at
  bits k·bits, stored with 2^(bits−1) added; w = scale[o, i // group] · (q − zero point).
- bitsandbytes 4-bit: two 4-bit codes a byte (the first in the high nibble) over the flat weight, w =
  quant_map[code] · absmax[j // blocksize]; with double quantization the absmax are themselves uint8 codes of
  a blockwise 8-bit quantization (nested_quant_map, nested_absmax, + offset). 8-bit: w = q · SCB[o] / 127.
- FP8 with block scales: w = fp8 · weight_scale_inv[o // b0, i // b1].
- torch.ao quantized tensors: (int_repr − zero_point) · scale, per tensor or per channel, as `dequantize()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modinspect.errors import CorruptFileError

if TYPE_CHECKING:
    import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_int32(
    packed: torch.Tensor, bits: int, order: tuple[int, ...] | None = None
) -> torch.Tensor:
    """int32 words [..., n] -> the int32 values they pack, [..., n·32/bits], value k of a word at bits k·bits
    (or, with `order`, value order[k] there)."""
    import torch

    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    values = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    if order is not None:
        values = values[..., list(_inverse(order))]
    return values.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for position, column in enumerate(order):
        inv[column] = position
    return tuple(inv)


def gptq_rows(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    r0: int,
    r1: int,
    v1_zeros: bool = True,
) -> torch.Tensor:
    """Rows [r0, r1) (output features) of a GPTQ layer's weight, float32 [r1 − r0, in]."""
    import torch

    q = unpack_int32(qweight[:, r0:r1].t(), bits).t()  # [in, rows]
    zeros = unpack_int32(qzeros, bits)[:, r0:r1]  # [groups, rows]
    if v1_zeros:
        zeros = zeros + 1
    g = g_idx.to(torch.int64)
    w = (q - zeros[g]).to(torch.float32) * scales[g, r0:r1].to(torch.float32)
    return w.t()


def awq_rows(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    r0: int,
    r1: int,
) -> torch.Tensor:
    """Rows [r0, r1) of an AWQ (GEMM) layer's weight, float32 [r1 − r0, in]."""
    import torch

    per = 32 // bits
    c0, c1 = r0 // per, -(-r1 // per)
    q = unpack_int32(qweight[:, c0:c1], bits, AWQ_ORDER)[:, r0 - c0 * per : r1 - c0 * per]
    zeros = unpack_int32(qzeros[:, c0:c1], bits, AWQ_ORDER)[:, r0 - c0 * per : r1 - c0 * per]
    inputs, groups = q.shape[0], scales.shape[0]
    group = inputs // groups
    g = torch.arange(inputs) // group
    w = (q - zeros[g]).to(torch.float32) * scales[g, r0:r1].to(torch.float32)
    return w.t()


def pack_quantized_rows(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    columns: int,
    bits: int,
    r0: int,
    r1: int,
) -> torch.Tensor:
    """Rows [r0, r1) of a compressed-tensors pack-quantized weight [out, columns], float32."""

    q = unpack_int32(packed[r0:r1], bits)[:, :columns] - (1 << (bits - 1))
    return _scaled_groups(q, scale[r0:r1], None if zero_point is None else zero_point[r0:r1])


def _scaled_groups(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None
) -> torch.Tensor:
    """q [rows, cols] · scale, the scale per tensor ([] or [1]), per row ([rows] or [rows, 1]) or per group
    of columns ([rows, groups]); minus the zero point, shaped as the scale, first."""
    import torch

    rows, cols = q.shape
    s = scale.to(torch.float32)
    z = None if zero_point is None else zero_point.to(torch.float32)
    if s.dim() == 2 and s.shape[1] > 1:
        group = -(-cols // s.shape[1])
        s = s.repeat_interleave(group, dim=1)[:, :cols]
        z = None if z is None else z.repeat_interleave(group, dim=1)[:, :cols]
    elif s.numel() == rows and rows != 1:
        s = s.reshape(rows, 1)
        z = None if z is None else z.reshape(rows, 1)
    else:
        s = s.reshape(())
        z = None if z is None else z.reshape(())
    qf = q.to(torch.float32)
    return (qf if z is None else qf - z) * s


def scaled_rows(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, r0: int, r1: int
) -> torch.Tensor:
    """Rows [r0, r1) of an 8-bit weight stored at its logical shape (compressed-tensors' int- and
    float-quantized formats) times its scale (per tensor, channel or group)."""
    rows = weight.shape[0]
    s = scale if scale.numel() in (1,) or scale.shape[0] != rows else scale[r0:r1]
    z = zero_point
    if z is not None and z.numel() > 1 and z.shape[0] == rows:
        z = z[r0:r1]
    return _scaled_groups(weight[r0:r1], s, z)


def bnb4_flat(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    quant_map: torch.Tensor,
    blocksize: int,
    e0: int,
    e1: int,
) -> torch.Tensor:
    """Elements [e0, e1) of a bitsandbytes 4-bit weight (flat), float32, `absmax` already float."""
    import torch

    raw = packed.reshape(-1)[e0 // 2 : -(-e1 // 2)]
    first = e0 % 2
    codes = torch.stack([raw >> 4, raw & 0x0F], dim=1).reshape(-1)[first : first + e1 - e0]
    codes = codes.to(torch.int64)
    values = quant_map.to(torch.float32)[codes]
    blocks = torch.arange(e0, e1) // blocksize
    return values * absmax.to(torch.float32)[blocks]


def bnb_nested_absmax(
    absmax: torch.Tensor,
    nested_absmax: torch.Tensor,
    nested_quant_map: torch.Tensor,
    nested_blocksize: int,
    offset: float,
) -> torch.Tensor:
    """bitsandbytes' double-quantized absmax (uint8 codes) as float32: blockwise 8-bit, plus the offset."""
    import torch

    codes = absmax.reshape(-1).to(torch.int64)
    blocks = torch.arange(codes.numel()) // nested_blocksize
    if blocks.numel() and int(blocks[-1]) >= nested_absmax.numel():
        raise CorruptFileError(
            f"bitsandbytes double quantization: {codes.numel():,} absmax codes in blocks of "
            f"{nested_blocksize} need {int(blocks[-1]) + 1:,} nested absmax, the file has "
            f"{nested_absmax.numel():,}"
        )
    return (
        nested_quant_map.to(torch.float32)[codes] * nested_absmax.to(torch.float32)[blocks] + offset
    )


def bnb8_rows(weight: torch.Tensor, scb: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of a bitsandbytes LLM.int8 weight: q · SCB[row] / 127."""
    import torch

    return weight[r0:r1].to(torch.float32) * (scb[r0:r1].to(torch.float32) / 127.0).unsqueeze(1)


def fp8_block_rows(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], r0: int, r1: int
) -> torch.Tensor:
    """Rows [r0, r1) of an FP8 weight with block scales (DeepSeek-V3's `weight_scale_inv`), float32."""
    import torch

    b0, b1 = block
    cols = weight.shape[1]
    rows = torch.arange(r0, r1) // b0
    s = scale_inv.to(torch.float32)[rows].repeat_interleave(b1, dim=1)[:, :cols]
    return weight[r0:r1].to(torch.float32) * s


def ao_dequantize(t: torch.Tensor) -> torch.Tensor:
    """A torch.ao quantized tensor's values, float32: (int_repr − zero_point) · scale, per tensor or per
    channel along its axis, from the stored numbers (what `Tensor.dequantize()` computes)."""
    import torch

    q = t.int_repr().to(torch.float32)
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return (q - float(t.q_zero_point())) * float(t.q_scale())
    axis = t.q_per_channel_axis()
    shape = [1] * q.dim()
    shape[axis] = q.shape[axis]
    scales = t.q_per_channel_scales().to(torch.float32).reshape(shape)
    zeros = t.q_per_channel_zero_points().to(torch.float32).reshape(shape)
    return (q - zeros) * scales
