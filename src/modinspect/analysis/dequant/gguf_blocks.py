"""ggml's block-quantised types dequantised in torch: a port of gguf-py's `gguf.quants` (llama.cpp's own
Python reference, itself checked bit for bit against ggml-quants.c), one function per type.

Each function takes the raw blocks of a tensor (`uint8`, one block a row: [n_blocks, block bytes]) and returns
their values as float32, [n_blocks, block elements]. The types ported are the ones llama.cpp's quantize writes
for most files (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K..Q6_K); the others (the IQ types, TQ*,
MXFP4, ...) go through gguf-py's numpy `dequantize` when the `gguf` package is installed (`dequantize_blocks`
says which, and names the type in one error line otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modinspect.errors import UsageError

if TYPE_CHECKING:
    import torch

QK_K = 256


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes as n float16 scales, widened to float32, [n, 1]."""
    import torch

    return raw.contiguous().view(torch.float16).to(torch.float32)


def _shifts(raw: torch.Tensor, shifts: tuple[int, ...], dim: int) -> torch.Tensor:
    """raw >> each shift, the shifts along a new axis at `dim` (numpy's broadcast `>> [0, 4]` idiom)."""
    import torch

    s = torch.tensor(shifts, dtype=torch.uint8)
    shape = [1] * (raw.dim() + 1)
    shape[dim] = len(shifts)
    return raw.unsqueeze(dim) >> s.reshape(shape)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] bytes -> [n, 32]: the 16 low nibbles, then the 16 high ones (Q4_0's element order)."""
    return (_shifts(qs, (0, 4), 1) & 0x0F).reshape(qs.shape[0], -1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian u32 -> [n, 32] of its bits, bit j at j."""
    return (_shifts(qh, tuple(range(8)), 2) & 1).reshape(qh.shape[0], 32)


def q4_0(b: torch.Tensor) -> torch.Tensor:
    import torch

    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).to(torch.int16) - 8
    return d * q.to(torch.float32)


def q4_1(b: torch.Tensor) -> torch.Tensor:
    import torch

    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).to(torch.float32) + m


def q5_0(b: torch.Tensor) -> torch.Tensor:
    import torch

    d = _f16(b[:, :2])
    q = (_nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)).to(torch.int16) - 16
    return d * q.to(torch.float32)


def q5_1(b: torch.Tensor) -> torch.Tensor:
    import torch

    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)
    return d * q.to(torch.float32) + m


def q8_0(b: torch.Tensor) -> torch.Tensor:
    import torch

    d = _f16(b[:, :2])
    return b[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d


def q2_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _shifts(qs.reshape(n, -1, 32), (0, 2, 4, 6), 2) & 3
    q = q.reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def q3_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    lscales = (_shifts(scales[:, :8], (0, 4), 1)).reshape(n, 16)
    hscales = (_shifts(scales[:, 8:], (0, 2, 4, 6), 1)).reshape(n, 16)
    sc = ((lscales & 0x0F) | ((hscales & 0x03) << 4)).to(torch.int16) - 32
    dl = (d * sc.to(torch.float32)).reshape(n, 16, 1)
    ql = _shifts(qs.reshape(n, -1, 32), (0, 2, 4, 6), 2).reshape(n, 16, 16) & 3
    qh = _shifts(hmask.reshape(n, -1, 32), tuple(range(8)), 2).reshape(n, 16, 16) & 1
    qh = qh ^ 1  # the offset is zero when the mask bit is set
    q = ql.to(torch.int16) - (qh.to(torch.int16) << 2)
    return (dl * q.to(torch.float32)).reshape(n, QK_K)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> ([n, 8], [n, 8])."""
    import torch

    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def q4_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    dd = (d * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
    q = (_shifts(b[:, 16:].reshape(n, -1, 32), (0, 4), 2) & 0x0F).reshape(n, -1, 32)
    return (dd * q.to(torch.float32) - dm).reshape(n, QK_K)


def q5_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    dd = (d * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
    ql = (_shifts(qs.reshape(n, -1, 32), (0, 4), 2) & 0x0F).reshape(n, -1, 32)
    qhb = (_shifts(qh.reshape(n, -1, 32), tuple(range(8)), 2) & 1).reshape(n, -1, 32)
    q = ql | (qhb << 4)
    return (dd * q.to(torch.float32) - dm).reshape(n, QK_K)


def q6_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b[:, 208:210])
    sc = scales.contiguous().view(torch.int8).to(torch.float32)
    dd = (d * sc).reshape(n, 16, 1)
    lo = (_shifts(ql.reshape(n, -1, 64), (0, 4), 2) & 0x0F).reshape(n, -1, 32)
    hi = (_shifts(qh.reshape(n, -1, 32), (0, 2, 4, 6), 2) & 0x03).reshape(n, -1, 32)
    q = (lo | (hi << 4)).to(torch.int16) - 32
    return (dd * q.reshape(n, 16, -1).to(torch.float32)).reshape(n, QK_K)


# ggml type name -> the port above
PORTED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": q4_0,
    "Q4_1": q4_1,
    "Q5_0": q5_0,
    "Q5_1": q5_1,
    "Q8_0": q8_0,
    "Q2_K": q2_k,
    "Q3_K": q3_k,
    "Q4_K": q4_k,
    "Q5_K": q5_k,
    "Q6_K": q6_k,
}


def dequantize_blocks(blocks: torch.Tensor, ggml_type: str) -> torch.Tensor:
    """float32 [n_blocks, block elements] of raw uint8 `blocks` [n_blocks, block bytes] of `ggml_type`.

    The ported types in torch; any other through gguf-py's `gguf.quants.dequantize` when it is installed;
    a UsageError naming the type when it is not (or gguf-py does not know it).
    """
    port = PORTED.get(ggml_type)
    if port is not None:
        return port(blocks)
    return _with_gguf_py(blocks, ggml_type)


def _with_gguf_py(blocks: torch.Tensor, ggml_type: str) -> torch.Tensor:
    import torch

    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise UsageError(
            f"dequantizing {ggml_type} needs the gguf package (pip install gguf); modinspect itself "
            f"dequantizes {', '.join(PORTED)}"
        ) from None
    import numpy as np

    try:
        qtype = GGMLQuantizationType[ggml_type]
        with np.errstate(all="ignore"):  # NaN or Inf scales are the file's values, shown as such
            values = dequantize(blocks.numpy(), qtype)
    except (KeyError, NotImplementedError, ValueError) as exc:
        raise UsageError(f"cannot dequantize {ggml_type}: gguf-py says {exc}") from None
    return torch.from_numpy(values.astype("float32", copy=False)).reshape(blocks.shape[0], -1)
