"""Property-based fuzzing: mutated safetensors files, torch zip and legacy files, sharded indexes and GGUF files.

The property: opening a mutated file, building its tree, and reading what opens raises nothing but
modinspect's own errors (ModinspectError), and every run ends quickly (a hypothesis deadline, and an
alarm for a run that would never return).

The normal suite runs a few thousand derandomized cases (the same ones every time). A long campaign
draws fresh random cases:

    MODINSPECT_FUZZ_EXAMPLES=100000 python -m pytest tests/security -m fuzz_long -q

splits that many examples across the targets (without the variable the fuzz_long tests skip).
Each crash found is kept in test_fuzz_regressions.py with its bytes spelled out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from safetensors.torch import save_file

from hostile import (
    central_entries,
    colliding_float_pairs,
    colliding_int_pairs,
    colliding_ints,
    colliding_small_int_tuples,
    collision_flood,
    hash_bomb,
    hash_bomb_by_dup,
    list_of_a_long_string,
    local_entries,
    zip_pt,
)
from modinspect.analysis.tree import build_tree
from modinspect.errors import ModinspectError
from modinspect.run.source import open_source

LONG_EXAMPLES = int(os.environ.get("MODINSPECT_FUZZ_EXAMPLES", "0") or 0)
READ_LIMIT = (
    1 << 16
)  # read tensors up to 64 KB: mutated shapes may declare far more than the file holds
HARD_LIMIT = 10.0  # seconds before one case counts as hung


class Hung(Exception):
    """One case ran past HARD_LIMIT."""


def _event(label: str) -> None:
    """Tally an outcome in hypothesis's statistics (pytest --hypothesis-show-statistics); no-op outside a test."""
    with contextlib.suppress(InvalidArgument):
        event(label)


def exercise(path: Path) -> str:
    """Open, build the tree, read and stream what opens. Returns the outcome; other exceptions escape."""

    def alarm(_signum: int, _frame: object) -> None:
        raise Hung(f"{path} still running after {HARD_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HARD_LIMIT)
    try:
        with open_source(str(path)) as src:
            build_tree(src)
            build_tree(src, depth=1, expand=True)
            for info in src.tensors[:12]:
                if info.nbytes > READ_LIMIT:
                    continue
                try:
                    src.read_tensor(info.name)
                    for _chunk in src.iter_chunks(info.name, 7):
                        pass
                except ModinspectError as exc:
                    _event(f"read: {type(exc).__name__}")
        outcome = "opened"
    except ModinspectError as exc:
        outcome = type(exc).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    _event(outcome)
    return outcome


def fuzz_settings(examples: int, long: bool) -> settings:
    return settings(
        max_examples=max(1, LONG_EXAMPLES // len(TARGETS)) if long else examples,
        deadline=timedelta(seconds=2),
        derandomize=not long,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- base files


def _safetensors_base() -> bytes:
    import tempfile

    g = torch.Generator().manual_seed(0)
    tensors = {
        "encoder.0.weight": torch.randn(3, 4, generator=g),
        "encoder.0.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "encoder.1.weight": torch.randn(3, 4, generator=g),
        "encoder.1.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([1, 2], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 2),
        "fp8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.safetensors"
        save_file(
            tensors, str(path), metadata={"format": "pt", "encoder.2.weight": "encoder.1.weight"}
        )
        return path.read_bytes()


def _torch_base(legacy: bool = False, training: bool = False) -> bytes:
    import io

    g = torch.Generator().manual_seed(1)
    shared = torch.randn(4, 4, generator=g)
    sd = {
        "fc.weight": torch.randn(3, 4, generator=g),
        "fc.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "emb.weight": shared,
        "head.weight": shared,  # tied: one storage
        "view": shared[1:3, ::2],  # a strided view with an offset
        "bn.num_batches_tracked": torch.tensor(5),
    }
    obj: Any = sd
    if training:
        obj = {
            "epoch": 3,
            "model_state_dict": sd,
            "optimizer_state_dict": {
                "state": {0: {"step": torch.tensor(2.0)}},
                "param_groups": [{"lr": 0.1, "params": [0]}],
            },
            "loss": 0.25,
        }
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


ST_BASE = _safetensors_base()
ZIP_BASE = _torch_base()
ZIP_TRAINING_BASE = _torch_base(training=True)
LEGACY_BASE = _torch_base(legacy=True)


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _zip_from(members: list[tuple[str, bytes]]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------- mutation strategies

INTERESTING_INTS = [
    0,
    1,
    2,
    7,
    8,
    255,
    256,
    2**16,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**62,
    2**63 - 1,
    2**64 - 1,
]


@st.composite
def byte_edits(
    draw: st.DrawFn, data: bytes, region: tuple[int, int] | None = None, max_edits: int = 6
) -> bytes:
    """Bit flips, byte overwrites, insertions, deletions and splices within `region` (default: anywhere)."""
    out = bytearray(data)
    lo, hi = region or (0, len(data))
    for _ in range(draw(st.integers(1, max_edits))):
        hi = min(hi, len(out))
        if hi <= lo:
            break
        at = draw(st.integers(lo, hi - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "splice", "interesting"]))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
            hi += 1
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif (
            kind == "splice"
        ):  # copy a run of the file over another place: plausible bytes in the wrong spot
            src = draw(st.integers(0, len(out) - 1))
            chunk = bytes(out[src : src + draw(st.integers(1, 32))])
            out[at : at + len(chunk)] = chunk
        else:  # an interesting integer, little-endian, over 1, 2, 4 or 8 bytes
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) % (1 << (8 * width))
            out[at : at + width] = value.to_bytes(width, "little")
    return bytes(out)


@st.composite
def truncated(draw: st.DrawFn, data: bytes) -> bytes:
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.sampled_from([b"", b"\0", b"PK\x05\x06", b"\xff" * 8]))
    return data[:cut] + tail


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([*INTERESTING_INTS, -1, -(2**63), 10**30])
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def safetensors_structural(draw: st.DrawFn) -> bytes:
    """Edit the parsed header: one field of one entry, a dtype, offsets, shapes, metadata, keys; re-serialize."""
    n = int.from_bytes(ST_BASE[:8], "little")
    header = json.loads(ST_BASE[8 : 8 + n])
    data = ST_BASE[8 + n :]
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(
            st.sampled_from(
                ["dtype", "shape", "data_offsets", "entry", "metadata", "rename", "begin", "end"]
            )
        )
        if not isinstance(header[name], dict):  # an earlier edit replaced the entry
            header[name] = {}
        if field in ("begin", "end") and not (
            isinstance(header[name].get("data_offsets"), list)
            and len(header[name]["data_offsets"]) == 2
            and all(type(o) is int for o in header[name]["data_offsets"])
        ):
            field = "data_offsets"
        if field == "dtype":
            header[name]["dtype"] = draw(
                st.sampled_from(
                    [
                        "F32",
                        "F16",
                        "BF16",
                        "I64",
                        "U8",
                        "BOOL",
                        "F4",
                        "F6_E2M3",
                        "F8_E8M0",
                        "C64",
                        "F128",
                        "",
                        "f32",
                    ]
                )
                | JSON_VALUES
            )
        elif field == "shape":
            header[name]["shape"] = draw(
                st.lists(st.sampled_from([*INTERESTING_INTS, -1, 3, 4]), max_size=4) | JSON_VALUES
            )
        elif field == "data_offsets":
            header[name]["data_offsets"] = draw(
                st.lists(st.sampled_from([*INTERESTING_INTS, -4, 12, 48]), max_size=3) | JSON_VALUES
            )
        elif field in ("begin", "end"):
            begin, end = header[name]["data_offsets"]
            delta = draw(st.integers(-64, 64))
            header[name]["data_offsets"] = (
                [begin + delta, end] if field == "begin" else [begin, end + delta]
            )
        elif field == "entry":
            header[name] = draw(JSON_VALUES)
        elif field == "metadata":
            header["__metadata__"] = draw(
                JSON_VALUES | st.dictionaries(st.text(max_size=20), st.text(max_size=20))
            )
        else:
            header[draw(st.text(max_size=30))] = header.pop(name)
            names = sorted(k for k in header if k != "__metadata__")
            if not names:
                break
    raw = json.dumps(header).encode()
    if draw(st.booleans()):  # a duplicated key, which json.dumps cannot write
        raw = raw[:-1] + b', "' + draw(st.sampled_from(names or ["x"])).encode() + b'": {}}'
    length = draw(
        st.sampled_from([None, None, None, 0, 1, len(raw) - 1, len(raw) + 1, 2**62, 2**64 - 1])
    )
    out = struct.pack("<Q", len(raw) if length is None else length) + raw + data
    if draw(st.booleans()):
        out = draw(truncated(out))
    return out


@st.composite
def zip_header_edits(draw: st.DrawFn, base: bytes) -> bytes:
    """Hand-edit a field of a local header or central directory record: sizes, CRC, flags, method, offsets."""
    out = base
    central, local = central_entries(base), local_entries(base)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(central)))
        where = draw(st.sampled_from(["central", "local"]))
        at = central[name] if where == "central" else local[name]
        fields = (
            {
                "flags": (8, "<H"),
                "method": (10, "<H"),
                "crc": (16, "<I"),
                "csize": (20, "<I"),
                "usize": (24, "<I"),
                "name_len": (28, "<H"),
                "extra_len": (30, "<H"),
                "offset": (42, "<I"),
            }
            if where == "central"
            else {
                "flags": (6, "<H"),
                "method": (8, "<H"),
                "crc": (14, "<I"),
                "csize": (18, "<I"),
                "usize": (22, "<I"),
                "name_len": (26, "<H"),
                "extra_len": (28, "<H"),
            }
        )
        offset, fmt = fields[draw(st.sampled_from(sorted(fields)))]
        bits = 8 * struct.calcsize(fmt)
        value = draw(
            st.sampled_from([*INTERESTING_INTS, 8, 12, 14, 99]) | st.integers(0, (1 << bits) - 1)
        )
        out = (
            out[: at + offset]
            + struct.pack(fmt, value % (1 << bits))
            + out[at + offset + struct.calcsize(fmt) :]
        )
    return out


@st.composite
def zip_pickle_edits(draw: st.DrawFn, base: bytes) -> bytes:
    """Mutate data.pkl and re-zip with valid CRCs, so every case reaches the pickle scan and the unpickler."""
    members = _zip_members(base)
    out = []
    for name, data in members:
        if name.endswith("/data.pkl"):
            data = draw(byte_edits(data, max_edits=4))
        elif (
            "/data/" in name and draw(st.integers(0, 9)) == 0
        ):  # sometimes a storage of the wrong size
            data = data[: draw(st.integers(0, len(data)))]
        out.append((name, data))
    return _zip_from(out)


def _hostile_seed(body: Callable[[int], bytes]) -> bytes:
    """A torch.save zip file with `body` spliced in beside its tensors (hostile.zip_pt)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return zip_pt(Path(d), body).read_bytes()


# Seeds from the hostile corpus (branch pickle): bombs the structural pass refuses, and a small tower it
# reads, so the mutations explore both sides of the line.
HOSTILE_SEEDS = [
    _hostile_seed(lambda memo: hash_bomb(100, memo)),
    _hostile_seed(lambda memo: hash_bomb(12, memo)),
    _hostile_seed(lambda memo: hash_bomb_by_dup(100)),
    _hostile_seed(lambda memo: list_of_a_long_string(100_000)),
    # branch flood: dicts and sets of keys sharing one hash value, refused past 64 (and 64, which is read)
    _hostile_seed(lambda memo: collision_flood(colliding_ints(200))),
    _hostile_seed(lambda memo: collision_flood(colliding_ints(64))),
    _hostile_seed(lambda memo: collision_flood(colliding_small_int_tuples(200), 4, as_set=True)),
    _hostile_seed(lambda memo: collision_flood(colliding_int_pairs(200), 2, as_set=True)),
    _hostile_seed(lambda memo: collision_flood(colliding_float_pairs(200))),
]


def _torchscript_quant_base() -> bytes:
    """A scripted torch.ao quantize_dynamic model (branch quant): its int8 weights in a custom class's
    __getstate__ state, which the reader lists as data; data.pkl mutations reach that path."""
    import io
    import warnings

    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        torch.jit.save(torch.jit.script(quantized), buf)
    return buf.getvalue()


def _torchscript_qconv_base() -> bytes:
    """A scripted torch.ao static-quantized convolution (branch quantrest): its weight and bias in the module's
    own 15-entry __getstate__ tuple, which the reader names `weight` and `bias`; mutations reach that path."""
    import io
    import warnings

    tq = torch.ao.quantization
    torch.manual_seed(5)
    model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Conv2d(2, 3, 1), tq.DeQuantStub()).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(model, "qconfig", tq.default_qconfig)  # noqa: B010
        prepared = tq.prepare(model)
        prepared(torch.randn(1, 2, 3, 3))
        torch.jit.save(torch.jit.script(tq.convert(prepared)), buf)
    return buf.getvalue()


def _torchao_like_base() -> bytes:
    """A state dict holding a tensor subclass pickled as torchao's Int8Tensor is (branch torchao): the gate
    reads `_rebuild_wrapper_subclass`'s arguments and the state as data; mutations reach that path."""
    import io

    from hostile import Int8Tensor

    buf = io.BytesIO()
    torch.save({"l.weight": Int8Tensor((4, 4)), "l.bias": torch.zeros(4)}, buf)
    return buf.getvalue()


TORCHAO_LIKE_BASE = _torchao_like_base()
TORCHSCRIPT_QUANT_BASE = _torchscript_quant_base()
TORCHSCRIPT_QCONV_BASE = _torchscript_qconv_base()
ZIP_BASES = st.sampled_from(
    [
        ZIP_BASE,
        ZIP_TRAINING_BASE,
        *HOSTILE_SEEDS,
        TORCHSCRIPT_QUANT_BASE,
        TORCHSCRIPT_QCONV_BASE,
        TORCHAO_LIKE_BASE,
    ]
)


def _safetensors_bytes() -> st.SearchStrategy[bytes]:
    n = int.from_bytes(ST_BASE[:8], "little")
    return st.one_of(
        byte_edits(ST_BASE, region=(0, 8 + n)),  # the length prefix and the JSON header
        byte_edits(ST_BASE),
        safetensors_structural(),
        truncated(ST_BASE),
    )


def _zip_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        ZIP_BASES.flatmap(lambda b: byte_edits(b, max_edits=8)),
        ZIP_BASES.flatmap(zip_header_edits),
        ZIP_BASES.flatmap(truncated),
    )


def _zip_pickle_bytes() -> st.SearchStrategy[bytes]:
    return ZIP_BASES.flatmap(zip_pickle_edits)


def _legacy_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(byte_edits(LEGACY_BASE, max_edits=6), truncated(LEGACY_BASE))


# ---------------------------------------------------------------- sharded indexes

SHARD_NAMES = [
    "a.safetensors",
    "b.safetensors",
    "../a.safetensors",
    "/etc/hostname",
    "",
    ".",
    "..",
    "sub",
    "a.safetensors/",
    "./a.safetensors",
    "sub/../a.safetensors",
    "a.safetensors\0",
    "link_out",
    "loop",
    "missing.safetensors",
    "model.safetensors.index.json",
    "~",
    "a" * 300,
    "b.safetensors ",
]


def _sharded_folder(work: Path) -> Path:
    folder = work / "sharded"
    if not folder.exists():
        folder.mkdir()
        (folder / "sub").mkdir()
        g = torch.Generator().manual_seed(2)
        save_file(
            {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g)},
            str(folder / "a.safetensors"),
        )
        save_file({"head.weight": torch.randn(2, 3, generator=g)}, str(folder / "b.safetensors"))
        save_file({"outside": torch.ones(1)}, str(work / "outside.safetensors"))
        (folder / "link_out").symlink_to(work / "outside.safetensors")
        (folder / "loop").symlink_to(folder / "loop")
    return folder


INDEX_BASE = {
    "metadata": {"total_size": 68},
    "weight_map": {
        "fc.weight": "a.safetensors",
        "fc.bias": "a.safetensors",
        "head.weight": "b.safetensors",
    },
}


@st.composite
def index_structural(draw: st.DrawFn) -> bytes:
    doc: Any = json.loads(json.dumps(INDEX_BASE))
    wm = doc["weight_map"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "key", "add", "drop", "weight_map", "doc"]))
        if kind == "value" and wm:
            wm[draw(st.sampled_from(sorted(wm)))] = draw(
                st.sampled_from(SHARD_NAMES) | st.text(max_size=12) | JSON_VALUES
            )
        elif kind == "key" and wm:
            wm[draw(st.text(max_size=12))] = wm.pop(draw(st.sampled_from(sorted(wm))))
        elif kind == "add":
            wm[
                draw(
                    st.text(max_size=12) | st.sampled_from(["fc.weight", "head.weight", "outside"])
                )
            ] = draw(st.sampled_from(SHARD_NAMES))
        elif kind == "drop" and wm:
            wm.pop(draw(st.sampled_from(sorted(wm))))
        elif kind == "weight_map":
            doc["weight_map"] = draw(JSON_VALUES)
            break
        elif kind == "doc":
            doc = draw(JSON_VALUES)
            break
    return json.dumps(doc).encode()


def _index_bytes() -> st.SearchStrategy[bytes]:
    base = json.dumps(INDEX_BASE).encode()
    return st.one_of(index_structural(), byte_edits(base), truncated(base))


# ---------------------------------------------------------------- TorchScript code/ (branch formats)


def _torchscript_base() -> bytes:
    import io
    import warnings

    g = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(linear, torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 4, generator=g))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buf)
    return buf.getvalue()


TORCHSCRIPT_BASE = _torchscript_base()
CODE_PIECES = [
    b'"',
    b"'",
    b'"""',
    b"'''",
    b"\\",
    b"\n",
    b"\n  ",
    b"#",
    b"# type:",
    b"(",
    b")",
    b"[",
    b"]",
    b",",
    b"class Linear(Module):\n",
    b"  __parameters__ = ",
    b"  __buffers__ = [",
    b'"weight"',
    b"\\\n",
    b":",
]


@st.composite
def torchscript_code_edits(draw: st.DrawFn) -> bytes:
    """Splice lexer-relevant pieces (quotes, brackets, fake declarations) into code/ and re-zip with valid CRCs."""
    out = []
    for name, data in _zip_members(TORCHSCRIPT_BASE):
        if name.endswith(".py") and draw(st.booleans()):
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(data)))
                data = (
                    data[:at]
                    + b"".join(draw(st.lists(st.sampled_from(CODE_PIECES), max_size=8)))
                    + data[at:]
                )
        out.append((name, data))
    return _zip_from(out)


# ---------------------------------------------------------------- GGUF (branch gguf)


def _gguf_base() -> tuple[bytes, list[tuple[int, int]]]:
    """A small GGUF written by gguf-py, and where its integer fields lie: (offset, width) of every count,
    length, type, dim and offset in the header, found through gguf-py's own GGUFReader."""
    import tempfile

    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    import ggufs

    with tempfile.TemporaryDirectory() as d:
        path = ggufs.write(
            Path(d) / "x.gguf",
            [
                ("token_embd.weight", (4, 32), T.Q8_0),
                ("blk.0.attn_q.weight", (2, 256), T.Q4_K),
                ("blk.0.attn_norm.weight", (8,), T.F32),
                ("blk.1.attn_norm.weight", (8,), T.F16),
                ("blk.1.pos", (3,), T.I32),
                ("output.weight", (2, 32), T.BF16),
            ],
            kv=ggufs.llama_kv(blocks=2, vocab=12),
        )
        data = path.read_bytes()
        reader = GGUFReader(path)
        base = reader.data.ctypes.data
        fields = []
        for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
            for part in field.parts:
                if part.dtype.kind in "iu" and part.itemsize in (4, 8) and part.size <= 4:
                    at = part.ctypes.data - base
                    fields += [(at + i * part.itemsize, part.itemsize) for i in range(part.size)]
        del reader
    return data, fields


GGUF_BASE, GGUF_FIELDS = _gguf_base()


@st.composite
def gguf_field_edits(draw: st.DrawFn) -> bytes:
    """Set one to three of the header's integer fields (counts, lengths, types, dims, offsets) to a lie."""
    out = bytearray(GGUF_BASE)
    for _ in range(draw(st.integers(1, 3))):
        at, width = draw(st.sampled_from(GGUF_FIELDS))
        value = draw(
            st.sampled_from(INTERESTING_INTS)
            | st.integers(0, 64)
            | st.integers(0, (1 << (8 * width)) - 1)
        )
        out[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(out)


def _gguf_bytes() -> st.SearchStrategy[bytes]:
    header_end = max(at + width for at, width in GGUF_FIELDS)
    return st.one_of(
        gguf_field_edits(),
        byte_edits(GGUF_BASE, region=(0, header_end)),
        byte_edits(GGUF_BASE),
        truncated(GGUF_BASE),
    )


# ---------------------------------------------------------------- the targets

# name -> (strategy, file name it is written to, examples in the normal suite)
TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy[bytes]], str, int]] = {
    "safetensors": (_safetensors_bytes, "x.safetensors", 900),
    "zip": (_zip_bytes, "x.pt", 800),
    "zip_pickle": (_zip_pickle_bytes, "y.pt", 1000),
    "legacy": (_legacy_bytes, "z.pt", 700),
    "index": (_index_bytes, "model.safetensors.index.json", 600),
    "torchscript": (torchscript_code_edits, "s.pt", 300),
    "gguf": (_gguf_bytes, "x.gguf", 600),
}


def _run_target(target: str, work: Path, data: bytes) -> None:
    _strategy, name, _n = TARGETS[target]
    path = (_sharded_folder(work) if target == "index" else work) / name
    path.write_bytes(data)
    exercise(path)


def _make(target: str, long: bool) -> Callable[..., None]:
    strategy, _name, examples = TARGETS[target]

    @fuzz_settings(examples, long)
    @given(data=strategy())
    def run(work: Path, data: bytes) -> None:
        _run_target(target, work, data)

    return run


test_fuzz_safetensors = _make("safetensors", long=False)
test_fuzz_zip_bytes_and_headers = _make("zip", long=False)
test_fuzz_zip_pickle = _make("zip_pickle", long=False)
test_fuzz_legacy = _make("legacy", long=False)
test_fuzz_index = _make("index", long=False)
test_fuzz_torchscript_code = _make("torchscript", long=False)
test_fuzz_gguf = _make("gguf", long=False)

_long = [
    pytest.mark.fuzz_long,
    pytest.mark.skipif(
        LONG_EXAMPLES <= 0, reason="set MODINSPECT_FUZZ_EXAMPLES=N for a long campaign of N cases"
    ),
]


def _long_test(target: str) -> Callable[..., None]:
    fn = _make(target, long=True)
    for mark in _long:
        fn = mark(fn)
    return fn


test_long_fuzz_safetensors = _long_test("safetensors")
test_long_fuzz_zip_bytes_and_headers = _long_test("zip")
test_long_fuzz_zip_pickle = _long_test("zip_pickle")
test_long_fuzz_legacy = _long_test("legacy")
test_long_fuzz_index = _long_test("index")
test_long_fuzz_torchscript_code = _long_test("torchscript")
test_long_fuzz_gguf = _long_test("gguf")


def test_the_bases_are_valid(work: Path) -> None:
    """Unmutated, every base opens and reads: the mutations start from real files."""
    for target, data in [
        ("safetensors", ST_BASE),
        ("zip", ZIP_BASE),
        ("zip", ZIP_TRAINING_BASE),
        ("legacy", LEGACY_BASE),
        ("index", json.dumps(INDEX_BASE).encode()),
        ("torchscript", TORCHSCRIPT_BASE),
        ("gguf", GGUF_BASE),
        ("zip", TORCHSCRIPT_QUANT_BASE),
        ("zip", TORCHSCRIPT_QCONV_BASE),
        ("zip", TORCHAO_LIKE_BASE),
    ]:
        _strategy, name, _n = TARGETS[target]
        path = (_sharded_folder(work) if target == "index" else work) / name
        path.write_bytes(data)
        assert exercise(path) == "opened", target
