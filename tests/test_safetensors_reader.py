"""The safetensors reader: header-only listing, exact values, save_model aliases, strict validation."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from conftest import live
from models import Tied
from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnknownFormatError
from modinspect.run.source import open_source
from modinspect.sources.safetensors import MAX_HEADER_BYTES, SafetensorsSource


def write_raw(
    path: Path, header: Mapping[str, object] | bytes, data: bytes = b"", length: int | None = None
) -> Path:
    """`<Q header length> header data`, with the length overridable to lie about the header."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    n = len(h) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return path


def opened(path: Path) -> SafetensorsSource:
    """open_source of a safetensors file, typed as the reader it dispatches to."""
    src = open_source(str(path))
    assert isinstance(src, SafetensorsSource)
    return src


def entry(dtype: str, shape: Sequence[object], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def corrupt(path: Path, match: str) -> CorruptFileError:
    with pytest.raises(CorruptFileError) as info:
        open_source(str(path))
    message = str(info.value)
    assert message.startswith(f"{path} is not a valid safetensors file: it "), message
    assert match in message, message
    return info.value


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "i64": torch.arange(-6, 6, dtype=torch.int64).reshape(2, 2, 3),
        "flags": torch.tensor([True, False, True, True, False]),
        "fp8": (torch.randn(2, 8, generator=g) * 4).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "f64": torch.tensor([1e-300, -2.5, 1e300], dtype=torch.float64),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "hello"})
    return path, tensors


def test_header_is_read_without_importing_torch(
    mixed: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, tensors = mixed
    code = (
        "import sys\n"
        "from modinspect.run.source import open_source\n"
        f"src = open_source({str(path)!r})\n"
        "print(len(src.tensors), src.format, sorted(src.metadata.items()))\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "assert 'safetensors' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{len(tensors)} safetensors [('format', 'pt'), ('note', 'hello')]\n"


def test_listing_matches_what_save_file_wrote(mixed: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tensors = mixed
    with open_source(str(path)) as src:
        assert src.format == "safetensors"
        assert src.label == str(path)
        assert src.metadata == {"format": "pt", "note": "hello"}
        assert sorted(src.names()) == sorted(tensors)
        assert len(src.tensors) == len(tensors) == 10
        for name, t in tensors.items():
            info = src.info(name)
            assert info.shape == tuple(t.shape), name
            assert info.dtype == str(t.dtype).removeprefix("torch."), name
            assert info.nbytes == t.numel() * t.element_size(), name
            assert info.numel == t.numel(), name
            assert info.kind == "unknown"
            assert info.storage == f"{path}:{name}"
        assert src.modules is None and src.module is None
        assert src.state_dict_key is None and src.other_entries == []
        assert src.warnings == []
    assert src.info("scalar").shape == () and src.info("scalar").nbytes == 4
    assert src.info("empty").nbytes == 0
    # Distinct tensors never look tied.
    assert len({t.storage for t in src.tensors}) == len(src.tensors)


def test_values_equal_load_file(mixed: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tensors = mixed
    reference = load_file(str(path))
    with open_source(str(path)) as src:
        for name in tensors:
            got = src.read_tensor(name)
            want = reference[name]
            assert got.dtype == want.dtype, name
            assert got.shape == want.shape, name
            assert got.device.type == "cpu"
            if want.dtype == torch.float8_e4m3fn:
                # torch.equal has no fp8 kernel: compare the bit patterns.
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
                assert torch.equal(got.float(), tensors[name].float()), name
            else:
                assert torch.equal(got, want), name
                assert torch.equal(got, tensors[name]), name
        assert src.read_tensor("scalar").item() == 3.25
        assert src.read_tensor("empty").shape == (0, 4)
        everything = src.state_dict()
        assert list(everything) == src.names()
        assert [n for n, _ in src.iter_tensors(["i64", "f32"])] == ["i64", "f32"]
        with pytest.raises(KeyError):
            src.read_tensor("nope")


def test_read_tensor_result_is_writable_and_independent(
    mixed: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, tensors = mixed
    with open_source(str(path)) as src:
        a = src.read_tensor("f32")
        a.zero_()
        assert torch.equal(src.read_tensor("f32"), tensors["f32"])


def test_names_are_in_natural_order(tmp_path: Path) -> None:
    names = ["h.10.w", "h.9.w", "h.2.w", "a", "h.1.w", "emb"]
    path = tmp_path / "order.safetensors"
    save_file({n: torch.full((2,), float(i)) for i, n in enumerate(names)}, str(path))
    with open_source(str(path)) as src:
        assert src.names() == ["a", "emb", "h.1.w", "h.2.w", "h.9.w", "h.10.w"]
        assert src.read_tensor("h.10.w").tolist() == [0.0, 0.0]
        assert src.read_tensor("h.1.w").tolist() == [4.0, 4.0]


def test_save_model_aliases_share_storage(tmp_path: Path) -> None:
    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_model(model, str(path))
    with open_source(str(path)) as src:
        assert src.metadata == {"head.weight": "embed.weight"}
        names = src.names()
        assert len(names) == len(model.state_dict()) == 8
        assert sorted(names) == sorted(model.state_dict())
        assert names[-1] == "head.weight"  # aliases come after the stored tensors
        alias, kept = src.info("head.weight"), src.info("embed.weight")
        assert alias.storage == kept.storage == f"{path}:embed.weight"
        assert (alias.shape, alias.dtype, alias.nbytes) == ((50, 8), "float32", 50 * 8 * 4)
        others = [t.storage for t in src.tensors if t.name not in ("head.weight", "embed.weight")]
        assert kept.storage not in others
        assert torch.equal(src.read_tensor("head.weight"), model.embed.weight.detach())
        assert torch.equal(src.read_tensor("embed.weight"), model.embed.weight.detach())
        assert torch.equal(
            src.read_tensor("blocks.2.bias"), model.get_parameter("blocks.2.bias").detach()
        )


ROW_VIEW = """import torch
from torch import nn


class RowView(nn.Module):
    def __init__(self, view: bool = True) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("row", self.w.data[0] if view else torch.zeros(4))


def build() -> nn.Module:
    return RowView()


def separate() -> nn.Module:
    return RowView(view=False)
"""


def test_save_model_alias_of_a_part_is_not_a_whole_tie(tmp_path: Path) -> None:
    """save_model drops a buffer viewing row 0 of a [4, 4] weight, recording only 'row' -> 'w' in its metadata."""
    from safetensors.torch import load_model

    from conftest import invoke

    (tmp_path / "rowview.py").write_text(ROW_VIEW)
    sys.path.insert(0, str(tmp_path))
    try:
        import rowview
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    saved = rowview.build()
    path = tmp_path / "v.safetensors"
    save_model(saved, str(path))
    with open_source(
        str(path)
    ) as src:  # the file alone: it says the storage is shared, not the shape
        assert src.metadata == {"row": "w"} and src.shared_storage == {"row": "w"}
        assert src.notes == [
            "save_model recorded row only as sharing w's storage, not its shape: shown as w, which "
            "it may view only in part"
        ]
    entry = f"{tmp_path / 'rowview.py'}:build"
    plan = invoke("load", entry, str(path), "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["loaded"] == ["w"] and doc["mismatched"] == [] and doc["missing"] == []
    assert doc["tied"] == [{"name": "row", "via": "w"}]
    loaded = invoke("load", entry, str(path), "--strict")
    assert loaded.exit_code == 0, loaded.stdout + loaded.stderr
    reference = rowview.build()  # what safetensors' own load_model makes of the file
    load_model(reference, str(path))
    with open_source(
        entry, weights=str(path)
    ) as src:  # --weights: loading w loads the row that views it
        assert torch.equal(live(src).w, reference.w) and torch.equal(live(src).row, reference.row)
        assert torch.equal(live(src).row, saved.w.detach()[0])
    assert invoke("tree", entry, "--weights", str(path)).exit_code == 0
    diff = invoke(
        "diff", entry, str(path), "--json"
    )  # a fresh random model: w differs, row is matched through w
    report = json.loads(diff.stdout)
    assert report["shape_mismatch"] == [] and report["aliased"] == [{"name": "row", "via": "w"}]
    # a model whose row is a buffer of its own: the file holds no [4] tensor for it
    alone = json.loads(
        invoke(
            "load", f"{tmp_path / 'rowview.py'}:separate", str(path), "--dry-run", "--json"
        ).stdout
    )
    assert alone["missing"] == ["row"] and alone["mismatched"] == [] and alone["tied"] == []


def test_metadata_naming_no_tensor_is_not_an_alias(tmp_path: Path) -> None:
    path = tmp_path / "meta.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt", "w": "other", "x": "y"})
    with open_source(str(path)) as src:
        assert src.names() == ["w"]
        assert src.metadata == {"format": "pt", "w": "other", "x": "y"}


# ---------------------------------------------------------------- dtype codes


@pytest.mark.parametrize(
    ("code", "dtype", "shape", "nbytes"),
    [
        ("F8_E4M3", "float8_e4m3fn", [3, 4], 12),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz", [5], 5),
        ("F8_E5M2", "float8_e5m2", [2, 2], 4),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz", [7], 7),
        ("F8_E8M0", "float8_e8m0fnu", [6], 6),
        ("F4", "float4_e2m1fn", [2, 3], 3),
        ("F4", "float4_e2m1fn", [8], 4),
        ("F6_E2M3", "float6_e2m3fn", [4], 3),
        ("F6_E3M2", "float6_e3m2fn", [8], 6),
        ("BF16", "bfloat16", [3], 6),
        ("C64", "complex64", [2], 16),
        ("U16", "uint16", [3], 6),
        ("BOOL", "bool", [9], 9),
    ],
)
def test_dtype_codes_and_byte_sizes(
    tmp_path: Path, code: str, dtype: str, shape: list[int], nbytes: int
) -> None:
    path = write_raw(
        tmp_path / "x.safetensors", {"t": entry(code, shape, 0, nbytes)}, b"\x00" * nbytes
    )
    with open_source(str(path)) as src:
        info = src.info("t")
        assert (info.dtype, info.shape, info.nbytes) == (dtype, tuple(shape), nbytes)
    assert dtypes.BY_SAFETENSORS[code].name == dtype
    # The dtype is one modinspect can size everywhere else too.
    assert dtypes.nbytes(dtype, math.prod(shape)) == nbytes


def test_f4_with_odd_element_count_is_an_error(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"t": entry("F4", [3], 0, 2)}, b"\x00\x00")
    corrupt(path, "gives 't' 3 elements of F4, not a whole number of bytes")


def test_f8_e8m0_values_are_read(tmp_path: Path) -> None:
    # e8m0 is a bare exponent with bias 127: byte 127 is 1.0, 128 is 2.0, 125 is 0.25.
    path = write_raw(
        tmp_path / "x.safetensors", {"s": entry("F8_E8M0", [3], 0, 3)}, bytes([127, 128, 125])
    )
    with open_source(str(path)) as src:
        t = src.read_tensor("s")
        assert t.dtype == torch.float8_e8m0fnu
        assert t.float().tolist() == [1.0, 2.0, 0.25]


def test_dtype_this_torch_cannot_hold_is_a_clear_error_on_read(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"t": entry("F6_E2M3", [4], 0, 3)}, b"\x00" * 3)
    with open_source(str(path)) as src:
        assert src.info("t").nbytes == 3
        with pytest.raises(
            CorruptFileError, match=r"this torch cannot hold float6_e2m3fn tensors \('t'\)"
        ):
            src.read_tensor("t")


# ---------------------------------------------------------------- validation


def test_valid_hand_written_file_reads(tmp_path: Path) -> None:
    data = struct.pack("<4f", 1, 2, 3, 4) + struct.pack("<2q", -7, 9)
    header = {
        "__metadata__": {"k": "v"},
        "b": entry("I64", [2], 16, 32),
        "a": entry("F32", [2, 2], 0, 16),
    }
    path = write_raw(tmp_path / "ok.safetensors", header, data)
    with open_source(str(path)) as src:
        assert src.names() == ["a", "b"]
        assert src.read_tensor("a").tolist() == [[1.0, 2.0], [3.0, 4.0]]
        assert src.read_tensor("b").tolist() == [-7, 9]
        assert src.metadata == {"k": "v"}


def test_empty_header_with_no_tensors_is_valid(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "none.safetensors", {})
    with open_source(str(path)) as src:
        assert src.tensors == [] and src.metadata == {}


def test_header_length_larger_than_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", b'{"a": 1}', length=500)
    corrupt(path, "declares a 500-byte header but the file holds 8 bytes after it")


def test_header_length_over_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
    corrupt(path, "declares a 100,000,001-byte header (limit 100,000,000)")


def test_huge_header_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}")
    corrupt(path, f"declares a {2**64 - 1:,}-byte header")


def test_non_utf8_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", b'{"\xff\xfe": 1}')
    corrupt(path, "has a header that is not UTF-8")


def test_invalid_json_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", b'{"a": {"dtype": "F32",}')
    corrupt(path, "has a header that is not valid JSON (JSONDecodeError)")


def test_deeply_nested_json_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    corrupt(path, "has a header that is not valid JSON (RecursionError)")


def test_header_that_is_a_list(tmp_path: Path) -> None:
    from modinspect.sources.safetensors import SafetensorsHeader

    path = write_raw(tmp_path / "x.safetensors", b'[{"a": 1}, 2]')
    with pytest.raises(CorruptFileError, match="it has a header that is not a JSON object"):
        SafetensorsHeader(path)
    # Through open_source the first bytes decide: without a '{' it is not taken for safetensors at all.
    with pytest.raises(UnknownFormatError, match="is not a checkpoint modinspect reads"):
        open_source(str(path))


def test_header_that_is_a_string(tmp_path: Path) -> None:
    from modinspect.sources.safetensors import SafetensorsHeader

    path = write_raw(tmp_path / "x.safetensors", b'"{not an object}"')
    with pytest.raises(CorruptFileError, match="has a header that is not a JSON object"):
        SafetensorsHeader(path)


def test_duplicate_keys(tmp_path: Path) -> None:
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = write_raw(tmp_path / "x.safetensors", raw, b"\x00" * 4)
    corrupt(path, "has a header with a duplicate key 'a'")


def test_duplicate_keys_inside_an_entry(tmp_path: Path) -> None:
    raw = b'{"a": {"dtype": "F32", "dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}'
    path = write_raw(tmp_path / "x.safetensors", raw, b"\x00" * 4)
    corrupt(path, "has a header with a duplicate key 'dtype'")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        # where no other check looks: a field nobody reads
        (
            b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": {"k": 1, "k": 2}}}',
            "k",
        ),
        # before a later fault, and before an earlier entry's fault: the parser met it first
        (b'{"a": {"dtype": "F32", "shape": [{"s": 1, "s": 1}], "data_offsets": [0, 4]}}', "s"),
        (
            b'{"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}, "b": {"z": 0, "z": 0}}',
            "z",
        ),
        # inner objects close first
        (b'{"__metadata__": {"m": "1", "m": "2"}, "q": {"n": {"i": 1, "i": 2}, "n": 0}}', "m"),
        (b'{"q": {"n": {"i": 1, "i": 2}, "n": 0}}', "i"),
    ],
)
def test_the_first_duplicate_the_parser_meets_is_named(
    tmp_path: Path, raw: bytes, key: str
) -> None:
    corrupt(
        write_raw(tmp_path / "x.safetensors", raw, b"\x00" * 4),
        f"has a header with a duplicate key {key!r}",
    )


def test_natural_order_through_string_keys_is_natural_key_order() -> None:
    import random

    from modinspect.sources.safetensors import _natural_strings, natural_key, natural_order

    rng = random.Random(0)
    atoms = [
        "a",
        "b",
        ".",
        "_",
        "0",
        "00",
        "1",
        "01",
        "9",
        "10",
        "99",
        "100",
        "007",
        "²",
        "!",
        "\x02",
        "é",
        "🙂",
        "Z",
    ]
    for _ in range(300):
        names = [
            "".join(rng.choice(atoms) for _ in range(rng.randint(0, 6)))
            for _ in range(rng.randint(1, 40))
        ]
        assert natural_order(names) == sorted(names, key=natural_key)
        assert _natural_strings(names) is not None  # these took the fast path
    odd = ["a\x01", "a", "a\x001", "a1"]  # chr(0)/chr(1) would alias the string keys' separators
    assert natural_order(odd) == sorted(odd, key=natural_key)


def test_unknown_dtype(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": entry("F128", [1], 0, 16)}, b"\x00" * 16)
    corrupt(path, "gives 'w' the unknown dtype 'F128'")


def test_missing_dtype(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "x.safetensors", {"w": {"shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4
    )
    corrupt(path, "gives 'w' the unknown dtype None")


@pytest.mark.parametrize("shape", [[-1], [2.0], ["2"], [True], 4, None, [[2]]])
def test_bad_shape(tmp_path: Path, shape: object) -> None:
    path = write_raw(
        tmp_path / "x.safetensors",
        {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}},
        b"\x00" * 8,
    )
    corrupt(path, "gives 'w' a shape that is not a list of non-negative integers")


@pytest.mark.parametrize(
    "offsets", [[0], [0, 4, 8], [4, 0], [-4, 0], [0.0, 4.0], "0-4", None, [False, 4]]
)
def test_bad_offsets(tmp_path: Path, offsets: object) -> None:
    path = write_raw(
        tmp_path / "x.safetensors",
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}},
        b"\x00" * 4,
    )
    corrupt(path, "gives 'w' data_offsets that are not [begin, end] with 0 <= begin <= end")


def test_entry_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": [1, 2]})
    corrupt(path, "describes 'w' with a list, not an object")


def test_offsets_wrong_size_for_shape(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": entry("F32", [2, 3], 0, 20)}, b"\x00" * 20)
    corrupt(path, "gives 'w' 20 bytes but shape [2, 3] of F32 needs 24")


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    path = write_raw(tmp_path / "x.safetensors", header, b"\x00" * 12)
    corrupt(path, "places 'b' at byte 4, which overlaps the previous tensor")


def test_two_tensors_on_the_same_bytes(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("I32", [2], 0, 8)}
    path = write_raw(tmp_path / "x.safetensors", header, b"\x00" * 8)
    corrupt(path, "at byte 0, which overlaps the previous tensor")


def test_hole_between_tensors(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}
    path = write_raw(tmp_path / "x.safetensors", header, b"\x00" * 20)
    corrupt(path, "places 'b' at byte 12, which leaves a hole before it")


def test_hole_before_the_first_tensor(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"a": entry("F32", [1], 4, 8)}, b"\x00" * 8)
    corrupt(path, "places 'a' at byte 4, which leaves a hole before it")


def test_offsets_past_end_of_file(tmp_path: Path) -> None:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 16, 32)}
    path = write_raw(tmp_path / "x.safetensors", header, b"\x00" * 20)
    corrupt(path, "needs 32 bytes of tensor data but holds 20 (truncated?)")


def test_truncated_real_file(mixed: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = mixed
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    corrupt(path, "(truncated?)")


def test_stray_bytes_after_last_tensor(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"a": entry("F32", [2], 0, 8)}, b"\x00" * 11)
    corrupt(path, "has 3 stray bytes after the last tensor")


@pytest.mark.parametrize(
    "meta", [{"a": 1}, {"a": None}, {"a": ["x"]}, ["a", "b"], "text", {"a": {"b": "c"}}]
)
def test_metadata_must_map_strings_to_strings(tmp_path: Path, meta: object) -> None:
    path = write_raw(
        tmp_path / "x.safetensors",
        {"__metadata__": meta, "a": entry("F32", [1], 0, 4)},
        b"\x00" * 4,
    )
    corrupt(path, "has __metadata__ that is not a map of strings to strings")


@pytest.mark.parametrize("size", [1, 5, 7])
def test_file_shorter_than_eight_bytes(tmp_path: Path, size: int) -> None:
    from modinspect.sources.safetensors import SafetensorsHeader

    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x05" * size)
    with pytest.raises(CorruptFileError, match=f"it is {size} bytes, too short for a header"):
        SafetensorsHeader(path)
    with pytest.raises(UnknownFormatError):
        open_source(str(path))


def test_empty_file_is_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="is empty"):
        open_source(str(path))


# ---------------------------------------------------------------- a header the same bytes as the last: parsed once


def _pair_headers(tmp_path: Path, n: int = 40) -> tuple[Path, Path, dict[str, object], bytes]:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    header |= {f"h.{i}.w": entry("I32", [2], 8 * i, 8 * i + 8) for i in range(n)}
    data = bytes(range(256)) * (8 * n // 256) + bytes(8 * n % 256)
    a = write_raw(tmp_path / "a.safetensors", header, data)
    b = write_raw(tmp_path / "b.safetensors", header, data[::-1])
    return a, b, header, data


def test_a_header_the_same_bytes_as_the_last_reuses_its_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modinspect.sources import safetensors as st

    a, b, _, _ = _pair_headers(tmp_path)
    fresh = [opened(p) for p in (a, b)]  # under the threshold: each parsed
    assert fresh[0].header.entries is not fresh[1].header.entries
    monkeypatch.setattr(st, "REUSE_MIN_BYTES", 0)
    sa, sb = opened(a), opened(b)
    assert sb.header.entries is sa.header.entries
    assert sb.header.metadata == sa.header.metadata and sb.header.metadata is not sa.header.metadata
    for reused, parsed in zip((sa, sb), fresh, strict=True):
        assert reused.tensors == parsed.tensors and reused.metadata == parsed.metadata
        assert [reused.byte_range(n) for n in reused.names()] == [
            parsed.byte_range(n) for n in parsed.names()
        ]
        assert all(
            torch.equal(reused.read_tensor(n), parsed.read_tensor(n)) for n in parsed.names()
        )


def test_a_header_reused_only_for_the_same_bytes_and_data_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modinspect.sources import safetensors as st

    monkeypatch.setattr(st, "REUSE_MIN_BYTES", 0)
    a, _, header, data = _pair_headers(tmp_path)
    sa = open_source(str(a))
    other = write_raw(tmp_path / "c.safetensors", header | {"h.0.w": entry("F32", [2], 0, 8)}, data)
    assert (
        open_source(str(other)).info("h.0.w").dtype == "float32"
    )  # one byte of the header differs
    sa = opened(a)  # the last long header again
    short = write_raw(tmp_path / "short.safetensors", header, data[:-4])
    corrupt(
        short, f"needs {len(data):,} bytes of tensor data but holds {len(data) - 4:,} (truncated?)"
    )
    long = write_raw(tmp_path / "long.safetensors", header, data + b"\x00" * 8)
    corrupt(long, "has 8 stray bytes after the last tensor")
    assert opened(a).header.entries is sa.header.entries
    del sa
    import gc

    gc.collect()
    assert (
        st.SafetensorsHeader._last is not None and st.SafetensorsHeader._last() is None
    )  # remembered weakly


def _big_endian_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this machine read numbers as a big-endian one would: each element's bytes in reverse order."""
    from modinspect.sources import base

    def swapped(buf: object, dtype: torch.dtype, count: int) -> torch.Tensor:
        t = torch.frombuffer(buf, dtype=dtype, count=count)
        unit = t.element_size() // 2 if dtype.is_complex else t.element_size()
        return t.view(torch.uint8).reshape(-1, unit).flip(-1).reshape(-1).view(dtype)

    monkeypatch.setattr(base, "_native_frombuffer", swapped)
    monkeypatch.setattr(base, "host_is_big_endian", lambda: True)


def test_a_big_endian_host_byte_swaps_what_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modinspect.analysis.diff import DiffOptions, compare_pair
    from modinspect.sources.byteread import PairReader

    torch.manual_seed(0)
    tensors = {
        "f32": torch.randn(5, 3),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(4, 2).bfloat16(),
        "f64": torch.randn(3).double(),
        "i64": torch.arange(-3, 6) * 123_456_789,
        "i16": torch.arange(9, dtype=torch.int16) * 1000,
        "c64": torch.randn(4, dtype=torch.complex64),
        "u8": torch.arange(6, dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
    }
    save_file(tensors, str(tmp_path / "a.safetensors"))
    shifted = {k: v * 3 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(shifted, str(tmp_path / "b.safetensors"))
    reference, other = (
        load_file(str(tmp_path / "a.safetensors")),
        load_file(str(tmp_path / "b.safetensors")),
    )
    _big_endian_host(monkeypatch)
    with (
        open_source(str(tmp_path / "a.safetensors")) as a,
        open_source(str(tmp_path / "b.safetensors")) as b,
    ):
        for name, want in reference.items():
            assert torch.equal(a.read_tensor(name), want), name
            assert torch.equal(torch.cat(list(a.iter_chunks(name, 2))), want.reshape(-1)), name
        reader = PairReader()  # diff's own reads: the byte ranges as numbers
        try:
            for name in ("f32", "f64", "bf16"):
                result = compare_pair(a, name, b, name, name, DiffOptions(), reader=reader)
                max_diff = float((other[name].double() - reference[name].double()).abs().max())
                assert result.max_abs_diff == pytest.approx(max_diff, rel=1e-6), (
                    name
                )  # in the tensors' own dtype
        finally:
            reader.close()


def test_without_the_swap_a_big_endian_host_would_read_other_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modinspect.sources import base

    save_file({"w": torch.arange(1, 5, dtype=torch.float32)}, str(tmp_path / "a.safetensors"))
    _big_endian_host(monkeypatch)
    monkeypatch.setattr(
        base, "host_is_big_endian", lambda: False
    )  # the emulated host, the check left out
    with open_source(str(tmp_path / "a.safetensors")) as src:
        assert not torch.equal(src.read_tensor("w"), torch.arange(1, 5, dtype=torch.float32))
