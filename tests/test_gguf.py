"""The GGUF reader, checked against gguf-py's own GGUFReader on files written by its GGUFWriter."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

import ggufs
from conftest import invoke
from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnknownFormatError, UsageError
from modinspect.run.source import open_source
from modinspect.sources.gguf import GGUFSource

# ggml's plain types, by ggml name -> torch name: what the reader lists such a tensor as
TORCH_NAMES = {d.ggml_name: d.name for d in dtypes.DTYPES if d.ggml_name and not d.is_block}


def expected_value(field: gguf.ReaderField) -> str | None:
    """What the metadata should show for one of GGUFReader's fields, from gguf-py's own decoding."""
    kind = field.types[0]
    if kind == V.ARRAY:
        items = field.contents()
        if len(items) > 8:
            plural = {V.STRING: "strings", V.ARRAY: "arrays"}.get(
                field.types[1], field.types[1].name.lower()
            )
            return f"array of {len(items):,} {plural}"
        return None  # short arrays: checked by parse_short
    value = field.contents()
    if field.name == "general.file_type":
        return f"{value} ({gguf.LlamaFileType(value).name.removeprefix('MOSTLY_')})"
    if kind == V.BOOL:
        return "true" if value else "false"
    if kind in (V.FLOAT32, V.FLOAT64):
        return None  # checked as numbers
    return str(value)


def check_metadata(meta: dict[str, str], reader: gguf.GGUFReader) -> None:
    keys = [k for k in reader.fields if k not in ("GGUF.tensor_count", "GGUF.kv_count")]
    assert sorted(meta) == sorted(keys)
    for key in keys:
        field = reader.fields[key]
        expected = expected_value(field)
        if expected is not None:
            assert meta[key] == expected, key
        elif field.types[0] == V.ARRAY:
            items = field.contents()
            assert json.loads(meta[key]) == items, key
        else:  # a float: the shown text is the same float32/float64
            cast = np.float32 if field.types[0] == V.FLOAT32 else np.float64
            assert cast(float(meta[key])) == cast(field.contents()), key


@pytest.fixture
def llama_file(tmp_path: Path) -> Path:
    return ggufs.llama(tmp_path / "tiny.gguf", blocks=3)


def test_llama_file_matches_gguf_readers_view(tmp_path: Path) -> None:
    llama_file = ggufs.llama(tmp_path / "tiny.gguf", blocks=3, vocab=32000)
    reader = gguf.GGUFReader(llama_file)
    with open_source(llama_file) as src:
        assert isinstance(src, GGUFSource) and src.format == "gguf"
        assert src.names() == [t.name for t in reader.tensors]
        for t in reader.tensors:
            info = src.info(t.name)
            assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))  # PyTorch order
            assert info.numel == t.n_elements
            assert info.nbytes == t.n_bytes == t.data.nbytes
            assert src.ggml_type(t.name) == t.tensor_type.name
            assert info.dtype == TORCH_NAMES.get(t.tensor_type.name, t.tensor_type.name)
            assert src.byte_range(t.name) == (llama_file, t.data_offset, t.n_bytes)
        check_metadata(src.metadata, reader)
        assert src.metadata["tokenizer.ggml.tokens"] == "array of 32,000 strings"
        assert src.metadata["general.architecture"] == "llama"
        assert src.metadata["llama.block_count"] == "3"
        assert src.metadata["general.file_type"] == "15 (Q4_K_M)"
        assert src.metadata["llama.rope.freq_base"] == "10000.0"
        assert src.metadata["llama.attention.layer_norm_rms_epsilon"] == "1e-05"
        assert src.metadata["GGUF.version"] == "3"


def test_file_type_names_are_gguf_pys() -> None:
    from modinspect.sources.gguf import FILE_TYPES

    for ftype in gguf.LlamaFileType:
        assert FILE_TYPES[int(ftype)] == ftype.name.removeprefix("MOSTLY_")


def test_every_ggml_type_sizes_as_gguf_py_says(tmp_path: Path) -> None:
    """One tensor of each type gguf-py knows: the table agrees with GGML_QUANT_SIZES, the bytes with the reader."""
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        d = dtypes.BY_GGML[int(qtype)]
        assert (d.ggml_name, d.block, dtypes.nbytes(d.name, d.block)) == (qtype.name, block, size)
    tensors = [(f"t.{q.name}", (3, 2 * b), q) for q, (b, _s) in gguf.GGML_QUANT_SIZES.items()]
    path = ggufs.write(tmp_path / "all.gguf", tensors)
    reader = gguf.GGUFReader(path)
    with open_source(path) as src:
        assert isinstance(src, GGUFSource)
        for t in reader.tensors:
            info = src.info(t.name)
            assert (src.ggml_type(t.name), info.shape, info.nbytes) == (
                t.tensor_type.name,
                (3, t.shape[0]),
                t.n_bytes,
            )
            assert src.byte_range(t.name) == (path, t.data_offset, t.n_bytes)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64])
def test_plain_tensors_read_as_gguf_py_reads_them(tmp_path: Path, qtype: T) -> None:
    path = ggufs.write(tmp_path / "p.gguf", [("a.weight", (5, 7), qtype), ("b", (3,), qtype)])
    reader = gguf.GGUFReader(path)
    with open_source(path) as src:
        for t in reader.tensors:
            got = src.read_tensor(t.name)
            expected = torch.from_numpy(np.array(t.data))
            if qtype == T.BF16:  # numpy has no bfloat16: gguf-py hands its bytes back as uint8
                expected = torch.frombuffer(
                    bytearray(t.data.tobytes()), dtype=torch.bfloat16
                ).reshape(got.shape)
            assert got.dtype == getattr(torch, TORCH_NAMES[qtype.name])
            assert got.shape == expected.shape and torch.equal(got, expected)
            chunks = torch.cat(list(src.iter_chunks(t.name, 4)))
            assert torch.equal(chunks, expected.reshape(-1))


def test_quantized_tensor_is_listed_not_read(llama_file: Path) -> None:
    with open_source(llama_file) as src, pytest.raises(UsageError) as info:
        src.read_tensor("blk.0.attn_q.weight")
    assert str(info.value) == (
        f"{llama_file}: 'blk.0.attn_q.weight' is Q4_K-quantized; modinspect lists quantized GGUF tensors but does not "
        "dequantize them (gguf-py's gguf.quants.dequantize does)"
    )


def test_custom_alignment_and_version_2(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_custom_alignment(256)

    path = ggufs.write(tmp_path / "a.gguf", [("x", (3, 5), T.F32), ("y", (64,), T.Q8_0)], kv=kv)
    reader = gguf.GGUFReader(path)
    assert reader.alignment == 256
    with open_source(path) as src:
        assert src.metadata["general.alignment"] == "256"
        assert [src.byte_range(t.name) for t in reader.tensors] == [
            (path, t.data_offset, t.n_bytes) for t in reader.tensors
        ]
        assert all(
            r is not None and (r[1] - reader.data_offset) % 256 == 0
            for r in src.byte_ranges(src.names())
        )
    raw = bytearray(path.read_bytes())
    raw[4:8] = (2).to_bytes(4, "little")  # version 2 has version 3's little-endian layout
    path.write_bytes(bytes(raw))
    with open_source(path) as src:
        assert src.metadata["GGUF.version"] == "2" and src.names() == ["x", "y"]


def test_big_endian_gguf_is_refused_in_one_line(tmp_path: Path) -> None:
    path = ggufs.write(tmp_path / "be.gguf", [("x", (4,), T.F32)], endianess=gguf.GGUFEndian.BIG)
    result = invoke("tree", str(path))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {path} is a big-endian GGUF file; modinspect reads little-endian GGUF only\n"
    )


def test_version_1_is_refused(tmp_path: Path) -> None:
    path = ggufs.write(tmp_path / "v.gguf", [("x", (4,), T.F32)])
    raw = bytearray(path.read_bytes())
    raw[4:8] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(
        UnknownFormatError, match=r"is GGUF version 1; modinspect reads versions 2 and 3$"
    ):
        open_source(path)


def test_truncated_data_names_the_tensor(tmp_path: Path) -> None:
    path = ggufs.write(tmp_path / "t.gguf", [("x", (4,), T.F32), ("y", (512,), T.Q4_K)])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(
        CorruptFileError,
        match=r"places 'y' \(288 bytes of Q4_K\) at byte .*past the end of the file",
    ):
        open_source(path)


def test_split_file_says_it_is_one_part(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 1)
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 3)

    # Named as no part is: the others cannot be found (tests/test_gguf_split.py opens whole splits).
    path = ggufs.write(tmp_path / "m.gguf", [("x", (4,), T.F32)], kv=kv)
    with open_source(path) as src:
        assert src.notes == [
            "part 2 of a GGUF split into 3 files, but not named *-00002-of-00003.gguf as the parts must "
            "be: only this file's tensors are listed"
        ]


def test_header_only_needs_neither_torch_nor_numpy(llama_file: Path) -> None:
    code = (
        "import sys; from modinspect.run.source import open_source; from modinspect.analysis.tree import build_tree\n"
        f"src = open_source({str(llama_file)!r}); r = build_tree(src)\n"
        "print(r.totals.params, 'torch' in sys.modules, 'numpy' in sys.modules, 'gguf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    params = sum(t.n_elements for t in gguf.GGUFReader(llama_file).tensors)
    assert out.stdout.split() == [str(params), "False", "False", "False"]


def test_sniffed_before_safetensors(tmp_path: Path) -> None:
    """A GGUF of 123 tensors has '{' (123) at byte 8, where safetensors' JSON header starts."""
    path = ggufs.write(tmp_path / "n.gguf", [(f"t.{i}", (2,), T.F32) for i in range(123)])
    assert path.read_bytes()[8:9] == b"{"
    with open_source(path) as src:
        assert src.format == "gguf" and len(src.tensors) == 123
        assert math.prod(src.info("t.7").shape) == 2


# ---------------------------------------------------------------- tree: logical counts, stored bytes, bits per weight


def test_tree_counts_logical_elements_and_stored_bytes(llama_file: Path) -> None:
    from modinspect.analysis.tree import build_tree

    reader = gguf.GGUFReader(llama_file)
    with open_source(llama_file) as src:
        report = build_tree(src)
    assert report.totals.params == sum(t.n_elements for t in reader.tensors)
    assert report.totals.bytes == sum(t.n_bytes for t in reader.tensors)
    assert report.totals.tensors == len(reader.tensors)
    sizes = gguf.GGML_QUANT_SIZES
    expected: dict[str, list[int]] = {}
    for t in reader.tensors:
        acc = expected.setdefault(
            TORCH_NAMES.get(t.tensor_type.name, t.tensor_type.name), [0, 0, 0]
        )
        acc[0] += t.n_elements
        acc[1] += t.n_bytes
        acc[2] = int(t.tensor_type)
    assert {d.dtype: [d.elements, d.bytes] for d in report.by_dtype} == {
        k: v[:2] for k, v in expected.items()
    }
    for d in report.by_dtype:
        block, type_size = sizes[T(expected[d.dtype][2])]
        assert d.bits_per_weight == type_size * 8 / block
    rows = {r.name: r for r in report.tensors}
    for t in reader.tensors:
        assert rows[t.name].bits_per_weight == t.n_bytes * 8 / t.n_elements
    assert rows["blk.0.attn_q.weight"].bits_per_weight == 4.5  # Q4_K: 144 bytes per 256 weights
    assert rows["blk.0.attn_v.weight"].bits_per_weight == 6.5625  # Q6_K: 210 bytes per 256


def test_tree_groups_the_blocks_and_splits_runs_where_types_differ(tmp_path: Path) -> None:
    from modinspect.analysis.tree import build_tree

    tensors = ggufs.llama_tensors(blocks=5)
    tensors = [
        (n, s, T.Q8_0 if n == "blk.1.attn_v.weight" else q) for n, s, q in tensors
    ]  # as Q4_K_M mixes them
    path = ggufs.write(tmp_path / "m.gguf", tensors, kv=ggufs.llama_kv(blocks=5))
    reader = gguf.GGUFReader(path)
    with open_source(path) as src:
        report = build_tree(src)
    assert [c.short for c in report.root.children] == ["token_embd", "blk", "output_norm", "output"]
    blk = report.root.children[1]
    assert [(c.row.name, c.repeat, c.last_name) for c in blk.children] == [
        ("blk.0", 1, None),
        ("blk.1", 1, None),
        ("blk.2", 3, "blk.4"),
    ]
    assert blk.row.params == sum(t.n_elements for t in reader.tensors if t.name.startswith("blk."))
    assert blk.row.bytes == sum(t.n_bytes for t in reader.tensors if t.name.startswith("blk."))
    run = blk.children[2]
    assert run.run_bytes == sum(
        t.n_bytes for t in reader.tensors if t.name.split(".")[1] in ("2", "3", "4")
    )


def test_q4_k_4096_square_is_16_million_parameters_at_4_5_bits(tmp_path: Path) -> None:
    from modinspect.analysis.tree import build_tree
    from modinspect.render.jsonout import tree_document, tree_json

    path = ggufs.write(tmp_path / "q.gguf", [("blk.0.attn_q.weight", (4096, 4096), T.Q4_K)])
    (t,) = gguf.GGUFReader(path).tensors
    assert (t.n_elements, t.n_bytes) == (16_777_216, 9_437_184)
    result = invoke("tree", str(path))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "└── weight  [4096, 4096]  Q4_K  4.5 bpw  9.0 MiB\n" in out
    assert re.search(r"^Tensor elements +16,777,216  ", out, re.MULTILINE), out
    assert re.search(r"^By dtype +16,777,216  Q4_K · 9.0 MiB · 4.5 bpw$", out, re.MULTILINE), out
    doc = json.loads(invoke("tree", str(path), "--json").stdout)
    assert doc["schema_version"] == 2
    assert doc["totals"]["params"] == 16_777_216 and doc["totals"]["bytes"] == 9_437_184
    assert doc["tensors"] == [
        {
            "name": "blk.0.attn_q.weight",
            "shape": [4096, 4096],
            "dtype": "Q4_K",
            "kind": "unknown",
            "bytes": 9_437_184,
            "bits_per_weight": 4.5,
            "requires_grad": None,
            "persistent": None,
            "alias_of": None,
            "scheme": None,
            "logical_shape": None,
        }
    ]
    assert doc["by_dtype"] == [
        {"dtype": "Q4_K", "elements": 16_777_216, "bytes": 9_437_184, "bits_per_weight": 4.5}
    ]
    with open_source(path) as src:
        report = build_tree(src)
    assert json.loads(tree_json(report)) == tree_document(report)


def test_json_fast_path_is_the_document_for_a_mixed_file(llama_file: Path) -> None:
    from modinspect.analysis.tree import build_tree
    from modinspect.render.jsonout import tree_document, tree_json

    with open_source(llama_file) as src:
        report = build_tree(src)
    document = tree_document(report)
    assert json.loads(tree_json(report)) == document
    assert json.loads(tree_json(report, pretty=True)) == document
    assert {t["dtype"]: t["bits_per_weight"] for t in document["tensors"]} == {
        "Q8_0": 8.5,
        "float32": 32.0,
        "Q4_K": 4.5,
        "Q6_K": 6.5625,
        "Q4_0": 4.5,
        "Q5_0": 5.5,
        "bfloat16": 16.0,
    }


# ---------------------------------------------------------------- diff


def _edit_rows(rows: dict[str, list[int]]) -> Callable[[str, np.ndarray], np.ndarray]:
    """Change the first byte of these rows of these tensors (quantized: their blocks' bytes; plain: values)."""

    def edit(name: str, data: np.ndarray) -> np.ndarray:
        for r in rows.get(name, []):
            flat = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
            if data.dtype == np.uint8:
                flat[r, 0] ^= 0xFF
            else:
                flat[r, 0] += 1
        return data

    return edit


def test_diff_of_two_gguf_files_quantized_by_bytes_floats_by_value(tmp_path: Path) -> None:
    from modinspect.analysis.diff import diff_sources

    a = ggufs.llama(tmp_path / "a.gguf", blocks=3)
    rows = {
        "blk.1.attn_q.weight": [3, 7],
        "blk.2.ffn_down.weight": [0],
        "blk.0.attn_norm.weight": [0],
    }
    b = ggufs.write(
        tmp_path / "b.gguf", ggufs.llama_tensors(3), kv=ggufs.llama_kv(3), edit=_edit_rows(rows)
    )
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    with open_source(a) as sa, open_source(b) as sb:
        report = diff_sources(sa, sb)
    quantized = [t for t in ra.tensors if t.tensor_type.name not in TORCH_NAMES]
    assert report.compared == len(ra.tensors) and report.bytewise == len(quantized)
    assert {d.name for d in report.changed} == set(rows)
    assert report.identical == report.equal == len(ra.tensors) - len(rows)
    for d in report.changed:
        ta, tb = (next(t for t in r.tensors if t.name == d.name) for r in (ra, rb))
        if d.name == "blk.0.attn_norm.weight":  # F32: compared by value, against gguf-py's arrays
            delta = np.abs(ta.data.astype(np.float64) - tb.data.astype(np.float64))
            assert d.note is None and d.differing == int((delta > 0).sum()) == 1
            assert d.max_abs_diff == pytest.approx(float(delta.max()))
            continue
        # quantized: gguf-py's view is (rows, bytes per row); the rows whose bytes differ
        differing_rows = int((ta.data != tb.data).any(axis=1).sum())
        rows_total = ta.data.shape[0]
        assert differing_rows == len(rows[d.name])
        assert (
            d.differing == differing_rows * (t_elements := ta.n_elements // rows_total)
            and t_elements == d.shape[-1]
        )
        assert (d.max_abs_diff, d.rel_l2, d.cosine) == (None, None, None)
        assert (
            d.note
            == f"quantized: compared byte for byte; {differing_rows} of {rows_total} rows differ"
        )
    rollup = {r.module: r for r in report.rollup}
    assert rollup["blk.1"].max_abs_diff is None and rollup["blk.0"].max_abs_diff == pytest.approx(
        1.0
    )


def test_diff_cli_of_gguf_files(tmp_path: Path) -> None:
    a = ggufs.llama(tmp_path / "a.gguf")
    same = invoke("diff", str(a), str(a))
    assert same.exit_code == 0, same.stderr
    assert "quantized tensor pairs compared byte for byte" in same.stdout
    b = ggufs.write(
        tmp_path / "b.gguf",
        ggufs.llama_tensors_retyped(
            2,
            {
                "blk.0.attn_v.weight": (
                    (128, 256),
                    T.Q8_0,
                ),  # another quant type: listed, not compared
                "blk.1.ffn_up.weight": ((256, 256), T.Q5_0),  # another shape
                "output_norm.weight": (
                    (256,),
                    T.F16,
                ),  # the same values rounded to F16: compared by value, within tolerance
            },
        ),
        kv=ggufs.llama_kv(2),
        edit=_edit_rows({"blk.0.ffn_gate.weight": [5]}),
    )
    result = invoke("diff", str(a), str(b), "--json")
    assert result.exit_code == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dtype_mismatch"] == [
        {"name": "blk.0.attn_v.weight", "a": "Q6_K", "b": "Q8_0"},
        {"name": "output_norm.weight", "a": "float32", "b": "float16"},
    ]
    assert doc["shape_mismatch"] == [
        {"name": "blk.1.ffn_up.weight", "a": "[512, 256]", "b": "[256, 256]"}
    ]
    (gate,) = doc["changed"]
    assert gate["name"] == "blk.0.ffn_gate.weight"
    assert (gate["differing"], gate["numel"], gate["max_abs_diff"]) == (256, 512 * 256, None)
    assert gate["note"] == "quantized: compared byte for byte; 1 of 512 rows differ"
    (norm,) = doc["close"]
    assert (
        norm["name"] == "output_norm.weight"
        and norm["note"] is None
        and 0 < norm["max_abs_diff"] < 1e-2
    )
    # 21 tensors, 15 of them quantized (token_embd and 7 a block); the shape and the quantized type mismatch
    # are not compared (output_norm's F32/F16 mismatch is, by value)
    assert doc["compared"] == 21 - 2 and doc["bytewise"] == 15 - 2


def test_quantized_changes_are_found_without_importing_torch(tmp_path: Path) -> None:
    a = ggufs.llama(tmp_path / "a.gguf")
    b = ggufs.write(
        tmp_path / "b.gguf",
        ggufs.llama_tensors(2),
        kv=ggufs.llama_kv(2),
        edit=_edit_rows({"blk.1.ffn_down.weight": [0, 1, 2]}),
    )
    code = (
        "import sys; from modinspect.run.source import open_source; from modinspect.analysis.diff import diff_sources\n"
        f"r = diff_sources(open_source({str(a)!r}), open_source({str(b)!r}))\n"
        "print(r.identical, r.compared, [(d.name, d.differing) for d in r.changed], 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "20 21 [('blk.1.ffn_down.weight', 1536)] False"  # 3 rows of 512


# ---------------------------------------------------------------- the shipped sample


def test_the_sample_is_what_make_samples_writes(tmp_path: Path) -> None:
    from conftest import SAMPLES

    written = tmp_path / "tiny_llama.gguf"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import make_samples; "
        "make_samples._tiny_llama_gguf(Path(sys.argv[2]))"
    )  # its own process: its `models` is not the tests'
    subprocess.run(
        [sys.executable, "-c", code, str(SAMPLES), str(written)], check=True, capture_output=True
    )
    shipped, fresh = gguf.GGUFReader(SAMPLES / "tiny_llama.gguf"), gguf.GGUFReader(written)
    assert [
        (t.name, t.tensor_type, t.shape.tolist(), t.data.tobytes()) for t in shipped.tensors
    ] == [(t.name, t.tensor_type, t.shape.tolist(), t.data.tobytes()) for t in fresh.tensors]
    assert {k: f.contents() for k, f in shipped.fields.items()} == {
        k: f.contents() for k, f in fresh.fields.items()
    }
    with open_source(SAMPLES / "tiny_llama.gguf") as src:
        assert [(t.name, t.numel, t.nbytes) for t in src.tensors] == [
            (t.name, t.n_elements, t.n_bytes) for t in shipped.tensors
        ]
        check_metadata(src.metadata, shipped)
