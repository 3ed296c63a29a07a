"""Every dtype modinspect knows, one record each: its size, its kind, and its code in each format.

A leaf: it imports nothing from modinspect. Readers look a format's code up here (`BY_SAFETENSORS`,
`BY_GGML`, `BY_STORAGE`, `BY_SCALAR_TYPE`, `BY_GGUF_VALUE`), and every size is `nbytes(dtype, numel)`.
Names are torch's (`float32`, `float8_e4m3fn`), or ggml's for its block-quantised types (`Q4_K`), which
torch has no dtype for. tests/test_dtypes.py checks the table against torch, safetensors and gguf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

Kind = Literal["float", "complex", "int", "uint", "bool", "quantized", "block"]


@dataclass(frozen=True, slots=True)
class DType:
    """One dtype: its size (bits per element, or ggml's block layout) and its code in each format."""

    name: str  # torch's name (getattr(torch, name)), or ggml's for a block type ("Q4_K")
    kind: Kind
    bits: int = 0  # bits per element; 0 for a block type
    block: int = 1  # elements per block: more than 1 only for ggml's block-quantised types
    block_bytes: int = 0  # bytes per block of a block type
    # (rtol, atol): torch.testing.assert_close's defaults, diff's default tolerance
    tolerance: tuple[float, float] | None = None
    diff_bytes: bool = False  # diff reads and compares its values from the file's bytes itself
    aliases: tuple[str, ...] = ()  # torch's other names for it (torch.float is float32)
    safetensors: str | None = None  # the safetensors header's code ("F32")
    ggml: int | None = None  # ggml's type id (GGUF tensor infos)
    ggml_name: str | None = None  # ggml's name for it ("F32")
    gguf_value: int | None = None  # GGUF's metadata value type id
    storage: str | None = None  # torch's legacy typed storage class ("FloatStorage")
    scalar_type: int | None = None  # torch._export.serde.schema.ScalarType (a .pt2's dtype)
    struct: str | None = None  # the struct module's code, little-endian ("<f")

    @property
    def is_float(self) -> bool:
        """A real floating-point type (float8 and float4 included), as torch's `is_floating_point`."""
        return self.kind == "float"

    @property
    def is_complex(self) -> bool:
        return self.kind == "complex"

    @property
    def is_block(self) -> bool:
        """Stored in blocks of several elements with shared scales (ggml's Q4_K): no per-element size."""
        return self.block > 1

    @property
    def itemsize(self) -> int:
        """Bytes per element; a sub-byte or block type has none (ValueError)."""
        if self.block > 1 or self.bits % 8:
            raise ValueError(f"{self.name} has no whole number of bytes per element")
        return self.bits // 8


def _block(name: str, ggml: int, block: int, block_bytes: int) -> DType:
    return DType(name, "block", 0, block, block_bytes, ggml=ggml, ggml_name=name)


_F16_TOL, _BF16_TOL, _F32_TOL, _F64_TOL = (1e-3, 1e-5), (1.6e-2, 1e-5), (1.3e-6, 1e-5), (1e-7, 1e-7)

# fmt: off
DTYPES: tuple[DType, ...] = (
    DType("float64", "float", 64, tolerance=_F64_TOL, diff_bytes=True, aliases=("double",),
          safetensors="F64", ggml=28, ggml_name="F64", gguf_value=12, storage="DoubleStorage",
          scalar_type=8, struct="<d"),
    DType("float32", "float", 32, tolerance=_F32_TOL, diff_bytes=True, aliases=("float",),
          safetensors="F32", ggml=0, ggml_name="F32", gguf_value=6, storage="FloatStorage",
          scalar_type=7, struct="<f"),
    DType("float16", "float", 16, tolerance=_F16_TOL, diff_bytes=True, aliases=("half",),
          safetensors="F16", ggml=1, ggml_name="F16", storage="HalfStorage", scalar_type=6,
          struct="<e"),
    DType("bfloat16", "float", 16, tolerance=_BF16_TOL, diff_bytes=True, safetensors="BF16", ggml=30,
          ggml_name="BF16", storage="BFloat16Storage", scalar_type=13),
    DType("complex128", "complex", 128, tolerance=_F64_TOL, diff_bytes=True, aliases=("cdouble",),
          storage="ComplexDoubleStorage", scalar_type=11),
    DType("complex64", "complex", 64, tolerance=_F32_TOL, diff_bytes=True, aliases=("cfloat",),
          safetensors="C64", storage="ComplexFloatStorage", scalar_type=10),
    DType("complex32", "complex", 32, scalar_type=9),
    DType("int64", "int", 64, diff_bytes=True, aliases=("long",), safetensors="I64", ggml=27,
          ggml_name="I64", gguf_value=11, storage="LongStorage", scalar_type=5, struct="<q"),
    DType("int32", "int", 32, diff_bytes=True, aliases=("int",), safetensors="I32", ggml=26,
          ggml_name="I32", gguf_value=5, storage="IntStorage", scalar_type=4, struct="<i"),
    DType("int16", "int", 16, diff_bytes=True, aliases=("short",), safetensors="I16", ggml=25,
          ggml_name="I16", gguf_value=3, storage="ShortStorage", scalar_type=3, struct="<h"),
    DType("int8", "int", 8, diff_bytes=True, safetensors="I8", ggml=24, ggml_name="I8", gguf_value=1,
          storage="CharStorage", scalar_type=2, struct="<b"),
    DType("uint64", "uint", 64, safetensors="U64", gguf_value=10, storage="UInt64Storage",
          scalar_type=35, struct="<Q"),
    DType("uint32", "uint", 32, safetensors="U32", gguf_value=4, storage="UInt32Storage",
          scalar_type=34, struct="<I"),
    DType("uint16", "uint", 16, safetensors="U16", gguf_value=2, storage="UInt16Storage",
          scalar_type=28, struct="<H"),
    DType("uint8", "uint", 8, diff_bytes=True, safetensors="U8", gguf_value=0, storage="ByteStorage",
          scalar_type=1, struct="<B"),
    DType("bool", "bool", 8, diff_bytes=True, safetensors="BOOL", gguf_value=7, storage="BoolStorage",
          scalar_type=12, struct="<?"),
    DType("float8_e4m3fn", "float", 8, safetensors="F8_E4M3", storage="Float8_e4m3fnStorage",
          scalar_type=29),
    DType("float8_e4m3fnuz", "float", 8, safetensors="F8_E4M3FNUZ", storage="Float8_e4m3fnuzStorage",
          scalar_type=31),
    DType("float8_e5m2", "float", 8, safetensors="F8_E5M2", storage="Float8_e5m2Storage",
          scalar_type=30),
    DType("float8_e5m2fnuz", "float", 8, safetensors="F8_E5M2FNUZ", storage="Float8_e5m2fnuzStorage",
          scalar_type=32),
    DType("float8_e8m0fnu", "float", 8, safetensors="F8_E8M0", storage="Float8_e8m0fnuStorage",
          scalar_type=33),
    DType("float4_e2m1fn_x2", "float", 8),  # torch's: two float4 values packed in each byte
    # safetensors' sub-byte floats: torch has no dtype for them
    DType("float4_e2m1fn", "float", 4, safetensors="F4"),
    DType("float6_e2m3fn", "float", 6, safetensors="F6_E2M3"),
    DType("float6_e3m2fn", "float", 6, safetensors="F6_E3M2"),
    DType("qint8", "quantized", 8, storage="QInt8Storage"),
    DType("quint8", "quantized", 8, storage="QUInt8Storage"),
    DType("qint32", "quantized", 32, storage="QInt32Storage"),
    # ggml's block-quantised types: gguf-py's GGML_QUANT_SIZES (elements, bytes per block), plus the
    # Q4_0_4_4 family that older llama.cpp wrote (31-33, since removed from ggml)
    _block("Q4_0", 2, 32, 18), _block("Q4_1", 3, 32, 20), _block("Q5_0", 6, 32, 22),
    _block("Q5_1", 7, 32, 24), _block("Q8_0", 8, 32, 34), _block("Q8_1", 9, 32, 40),
    _block("Q2_K", 10, 256, 84), _block("Q3_K", 11, 256, 110), _block("Q4_K", 12, 256, 144),
    _block("Q5_K", 13, 256, 176), _block("Q6_K", 14, 256, 210), _block("Q8_K", 15, 256, 292),
    _block("IQ2_XXS", 16, 256, 66), _block("IQ2_XS", 17, 256, 74), _block("IQ3_XXS", 18, 256, 98),
    _block("IQ1_S", 19, 256, 50), _block("IQ4_NL", 20, 32, 18), _block("IQ3_S", 21, 256, 110),
    _block("IQ2_S", 22, 256, 82), _block("IQ4_XS", 23, 256, 136), _block("IQ1_M", 29, 256, 56),
    _block("Q4_0_4_4", 31, 32, 18), _block("Q4_0_4_8", 32, 32, 18), _block("Q4_0_8_8", 33, 32, 18),
    _block("TQ1_0", 34, 256, 54), _block("TQ2_0", 35, 256, 66), _block("MXFP4", 39, 32, 17),
    _block("NVFP4", 40, 64, 36), _block("Q1_0", 41, 128, 18),
)
# fmt: on


def _index(key: str) -> Mapping[Any, DType]:
    """The records by one of their codes (those that have it): each code names one dtype."""
    found: dict[Any, DType] = {}
    for d in DTYPES:
        code = getattr(d, key)
        if code is not None:
            if code in found:
                raise ValueError(f"{found[code].name} and {d.name} share the {key} {code!r}")
            found[code] = d
    return MappingProxyType(found)


BY_NAME: Mapping[str, DType] = _index("name")
BY_SAFETENSORS: Mapping[str, DType] = _index("safetensors")
BY_GGML: Mapping[int, DType] = _index("ggml")
BY_GGUF_VALUE: Mapping[int, DType] = _index("gguf_value")
BY_STORAGE: Mapping[str, DType] = _index("storage")
BY_SCALAR_TYPE: Mapping[int, DType] = _index("scalar_type")
# torch's other names -> its canonical one: 'double' -> 'float64'
ALIASES: Mapping[str, str] = MappingProxyType({a: d.name for d in DTYPES for a in d.aliases})
_BITS = {d.name: d.bits for d in DTYPES if not d.is_block}
# Bits per element of every dtype that has a size per element (every one but ggml's block types).
BITS: Mapping[str, int] = MappingProxyType(_BITS)
# The floating dtypes torch computes in (those assert_close has tolerances for); float8/float4 only store.
COMPUTE_FLOATS = frozenset(d.name for d in DTYPES if d.is_float and d.tolerance is not None)


def canonical(name: str) -> str:
    """torch's canonical name for a dtype name: 'float64' for 'double', the name itself otherwise."""
    return ALIASES.get(name, name)


def nbytes(dtype: str, numel: int, *, unknown_bits: int | None = None) -> int:
    """Bytes that `numel` elements of `dtype` take, rounded up to whole bytes, or to whole blocks.

    A dtype not in the table counts `unknown_bits` per element when given, and raises KeyError otherwise.
    """
    # One dict lookup first: a 100k-tensor safetensors header calls this once per tensor.
    bits = _BITS.get(dtype)
    if bits is not None:
        return -(-numel * bits // 8)
    d = BY_NAME.get(dtype)
    if d is not None:
        return -(-numel // d.block) * d.block_bytes
    if unknown_bits is None:
        raise KeyError(dtype)
    return -(-numel * unknown_bits // 8)


def itemsize(dtype: str) -> int:
    """Bytes per element of `dtype` (KeyError if unknown, ValueError if it has no whole bytes per element)."""
    return BY_NAME[dtype].itemsize
