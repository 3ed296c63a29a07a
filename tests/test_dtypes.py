"""The one dtype table, checked against torch, safetensors and gguf-py themselves."""

from __future__ import annotations

import math
import struct
import warnings

import gguf
import pytest
import torch
from safetensors.torch import _TYPES as SAFETENSORS_TYPES  # safetensors' own code -> torch dtype

from modinspect import dtypes
from modinspect.sources.pickle import gate


def _empty(dt: torch.dtype, n: int) -> torch.Tensor:
    with (
        warnings.catch_warnings()
    ):  # complex32 and the quantized dtypes warn that they are experimental
        warnings.simplefilter("ignore")
        if dt in (torch.qint8, torch.quint8, torch.qint32):
            return torch.quantize_per_tensor(torch.zeros(n), 1.0, 0, dt)
        return torch.empty(n, dtype=dt)


TORCH_ROWS = [d for d in dtypes.DTYPES if isinstance(getattr(torch, d.name, None), torch.dtype)]


def test_names_are_unique_and_torch_knows_every_non_block_name_but_safetensors_sub_byte_floats() -> (
    None
):
    names = [d.name for d in dtypes.DTYPES]
    assert len(names) == len(set(names)) == len(dtypes.BY_NAME)
    not_torch = {d.name for d in dtypes.DTYPES if d not in TORCH_ROWS and not d.is_block}
    assert not_torch == {"float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"}
    assert all(d.is_block == (d.kind == "block") for d in dtypes.DTYPES)


@pytest.mark.parametrize("row", TORCH_ROWS, ids=lambda d: d.name)
def test_each_torch_dtype_agrees_with_torch(row: dtypes.DType) -> None:
    dt = getattr(torch, row.name)
    assert row.bits == dt.itemsize * 8
    assert _empty(dt, 3).element_size() * 8 == row.bits
    assert row.is_float == dt.is_floating_point
    assert row.is_complex == dt.is_complex
    assert (row.kind == "quantized") == (dt in (torch.qint8, torch.quint8, torch.qint32))
    assert row.kind != "uint" or (not dt.is_signed and row.name.startswith("uint"))
    assert row.kind != "int" or dt.is_signed
    for alias in row.aliases:
        assert getattr(torch, alias) is dt
        assert dtypes.canonical(alias) == row.name
    if row.is_float and row.tolerance is not None:
        assert (torch.finfo(dt).bits, torch.finfo(dt).eps > 0) == (row.bits, True)
    if row.kind in ("int", "uint") and row.name != "uint64":
        info = torch.iinfo(dt)
        assert info.bits == row.bits
        assert (info.min < 0) == (row.kind == "int")
    assert dtypes.nbytes(row.name, 7) == _empty(dt, 7).untyped_storage().nbytes()
    assert dtypes.itemsize(row.name) == dt.itemsize


def test_every_torch_alias_is_in_the_table() -> None:
    """torch.double, torch.long...: every other name torch gives a dtype the table has is an alias."""
    for name in dir(torch):
        dt = getattr(torch, name)
        if not isinstance(dt, torch.dtype) or name in dtypes.BY_NAME:
            continue
        canonical = str(dt).removeprefix("torch.")
        if canonical in dtypes.BY_NAME and name != "chalf":  # complex32's alias: no format uses it
            assert dtypes.canonical(name) == canonical, name


def test_tolerances_are_torch_testing_assert_close_defaults() -> None:
    from torch.testing._comparison import default_tolerances

    with_tolerance = {d.name for d in dtypes.DTYPES if d.tolerance is not None}
    assert with_tolerance == {
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
    for name in with_tolerance:
        assert dtypes.BY_NAME[name].tolerance == default_tolerances(getattr(torch, name))
    assert {"float16", "bfloat16", "float32", "float64"} == dtypes.COMPUTE_FLOATS


def test_safetensors_codes_are_safetensors_own() -> None:
    ours = {code: d.name for code, d in dtypes.BY_SAFETENSORS.items()}
    theirs = {code: str(dt).removeprefix("torch.") for code, dt in SAFETENSORS_TYPES.items()}
    # Every code the installed safetensors maps, mapped alike; ours adds the formats' newer codes.
    assert {c: ours[c] for c in theirs} == theirs
    assert set(ours) - set(theirs) <= {"F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}


def test_ggml_types_are_gguf_py_quant_sizes() -> None:
    """Every ggml type gguf-py knows, with its block layout; ours adds only the removed Q4_0_4_4 family."""
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        d = dtypes.BY_GGML[int(qtype)]
        assert (d.ggml_name, d.block, dtypes.nbytes(d.name, block)) == (qtype.name, block, size)
        assert d.is_block == (block > 1)
        # two blocks take twice the bytes; a partial block is a whole one
        assert dtypes.nbytes(d.name, 2 * block) == 2 * size
        assert dtypes.nbytes(d.name, block + 1) == (2 * size if block > 1 else size + size)
    removed = set(dtypes.BY_GGML) - {int(q) for q in gguf.GGML_QUANT_SIZES}
    assert {dtypes.BY_GGML[i].name for i in removed} == {"Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"}


def test_gguf_metadata_value_types_are_gguf_pys() -> None:
    from gguf.constants import GGUFValueType

    for vt in GGUFValueType:
        if vt in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            assert int(vt) not in dtypes.BY_GGUF_VALUE
            continue
        d = dtypes.BY_GGUF_VALUE[int(vt)]
        assert d.name == vt.name.lower()
        assert d.struct is not None and struct.calcsize(d.struct) * 8 == d.bits


def test_struct_codes_size_their_dtype() -> None:
    for d in dtypes.DTYPES:
        if d.struct is not None:
            assert struct.calcsize(d.struct) * 8 == d.bits, d.name
            assert d.struct.startswith("<")


def test_scalar_types_are_torch_export_schemas() -> None:
    from torch._export.serde.serialize import _TORCH_TO_SERIALIZE_DTYPE

    theirs = {
        int(code): str(dt).removeprefix("torch.") for dt, code in _TORCH_TO_SERIALIZE_DTYPE.items()
    }
    assert {code: d.name for code, d in dtypes.BY_SCALAR_TYPE.items()} == theirs


def test_storage_classes_are_torchs() -> None:
    with warnings.catch_warnings():  # TypedStorage is deprecated
        warnings.simplefilter("ignore")
        checked = 0
        for name, d in dtypes.BY_STORAGE.items():
            cls = getattr(torch, name, None)  # this torch lacks the uint and float8 ones
            if cls is not None:
                assert cls.dtype == getattr(torch, d.name)
                checked += 1
    assert checked >= 15


def test_the_pickle_gate_allowlist_does_not_grow_from_the_table() -> None:
    """The security boundary derives its storage classes from the table: pinned here, by name."""
    assert set(gate.STORAGE_DTYPES) == {
        *("DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage"),
        *("IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"),
        *("ComplexFloatStorage", "ComplexDoubleStorage", "UInt16Storage", "UInt32Storage"),
        *("UInt64Storage", "Float8_e4m3fnStorage", "Float8_e5m2Storage", "Float8_e4m3fnuzStorage"),
        *("Float8_e5m2fnuzStorage", "Float8_e8m0fnuStorage", "QInt8Storage", "QUInt8Storage"),
        *("QInt32Storage", "UntypedStorage"),
    }
    assert gate.STORAGE_DTYPES["UntypedStorage"] == "uint8"
    # Every dtype name the gate admits is one the table sizes, but torch's bit-container and sub-byte
    # quantized types, which no state dict holds (sized as one byte an element, as before the table).
    unsized = {n for n in gate.TORCH_DTYPE_NAMES if dtypes.canonical(n) not in dtypes.BITS}
    assert unsized == {
        "bits8",
        "bits16",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "quint4x2",
        "quint2x4",
        "chalf",
        # torch.int1 ... torch.uint7: no tensor is stored in them; torchao's target_dtype names them
        *(f"{u}int{b}" for u in ("", "u") for b in range(1, 8)),
    }
    assert all(dtype in dtypes.BITS for dtype in gate.STORAGE_DTYPES.values())


@pytest.mark.parametrize(
    ("dtype", "numel", "expected"),
    [
        ("float32", 0, 0),
        ("float32", 5, 20),
        ("bool", 3, 3),
        ("complex128", 2, 32),
        ("float4_e2m1fn", 4, 2),
        ("float4_e2m1fn", 3, 2),  # a half-filled last byte is a whole byte
        ("float6_e2m3fn", 4, 3),
        ("float6_e2m3fn", 1, 1),
        ("Q4_K", 512, 288),
        ("Q4_K", 0, 0),
        ("Q8_0", 33, 68),
    ],
)
def test_nbytes_rounds_up_to_whole_bytes_and_blocks(dtype: str, numel: int, expected: int) -> None:
    assert dtypes.nbytes(dtype, numel) == expected
    assert expected == (
        math.ceil(numel / dtypes.BY_NAME[dtype].block) * dtypes.BY_NAME[dtype].block_bytes
        if dtypes.BY_NAME[dtype].is_block
        else math.ceil(numel * dtypes.BITS[dtype] / 8)
    )


def test_unknown_dtypes_raise_unless_given_a_size() -> None:
    with pytest.raises(KeyError):
        dtypes.nbytes("float128", 4)
    assert dtypes.nbytes("float128", 4, unknown_bits=8) == 4
    assert dtypes.nbytes("float32", 4, unknown_bits=8) == 16  # a known dtype keeps its own size
    with pytest.raises(ValueError, match="float4_e2m1fn has no whole number of bytes"):
        dtypes.itemsize("float4_e2m1fn")
    with pytest.raises(ValueError, match="Q4_K has no whole number"):
        dtypes.itemsize("Q4_K")
    assert "Q4_K" not in dtypes.BITS and dtypes.BITS["float6_e3m2fn"] == 6


def test_formats_codes_are_one_to_one() -> None:
    for index in ("BY_SAFETENSORS", "BY_GGML", "BY_GGUF_VALUE", "BY_STORAGE", "BY_SCALAR_TYPE"):
        table = getattr(dtypes, index)
        assert len({d.name for d in table.values()}) == len(table), index
