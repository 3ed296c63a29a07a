"""torch.export `.pt2` archives (torch.export.save), read from their JSON alone: no pickle is loaded.

The archive (torch >= 2.6) is a zip under one root folder:
  archive_format                        "pt2"
  models/<name>.json                    the serialized ExportedProgram: graph, signature, module call graph
  data/weights/<name>_weights_config.json     state-dict name -> {path_name, is_param, use_pickle, tensor_meta}
  data/weights/weight_<i>               the raw bytes of one storage (tensor_meta gives shape/stride/offset)
  data/constants/<name>_constants_config.json and tensor_<i>: lifted constants and non-persistent buffers
The module tree comes from the module call graph (every module's dotted name, in call order) and the
`nn_module_stack` of the graph's nodes (each module's class); kinds from the graph signature.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnknownFormatError
from modinspect.sources.base import (
    ModuleInfo,
    Source,
    TensorInfo,
    from_little_endian,
    is_row_major,
    read_chunks,
)
from modinspect.sources.pt2_program import MAX_PROGRAM_BYTES, graph_nodes, load_program
from modinspect.sources.views import (
    INT64_LIMIT,
    bounded_numel,
    check_view,
    describe_int,
    is_int64,
    strided_chunks,
)

if TYPE_CHECKING:
    import torch

_STRIDED = 7  # schema.Layout.Strided


@dataclass(frozen=True)
class _Payload:
    member: str  # the zip entry with the storage's bytes
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str


def is_pt2(names: list[str]) -> bool:
    return any(n.endswith("/archive_format") and n.count("/") == 1 for n in names)


def _ints(values: object, what: str, label: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise CorruptFileError(f"{label} gives {what} that is not a list")
    out = []
    for v in values:
        n = v.get("as_int") if isinstance(v, dict) else None
        if type(n) is int and n >= INT64_LIMIT:
            raise CorruptFileError(f"{label} gives {what} with {describe_int(n)}, past int64")
        if not is_int64(n):
            raise CorruptFileError(
                f"{label} gives {what} with a symbolic or negative size ({describe_int(v)}), not a saved tensor"
            )
        out.append(n)
    return tuple(out)


def module_types(stacks: tuple[str, ...]) -> dict[str, str]:
    """{module path: class name} from the graph nodes' nn_module_stack ('key,path,qualified.Class;...')."""
    types: dict[str, str] = {}
    for stack in stacks:
        for entry in stack.split(";"):
            first, last = entry.find(","), entry.rfind(",")
            if 0 <= first < last:
                types.setdefault(entry[first + 1 : last], entry[last + 1 :].rpartition(".")[2])
    return types


def _signature_kinds(specs: object) -> dict[str, tuple[str, bool | None]]:
    """{state name: (kind, persistent)} from the graph signature's input specs."""
    kinds: dict[str, tuple[str, bool | None]] = {}
    for spec in specs if isinstance(specs, list) else []:
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("parameter"), dict):
            kinds[str(spec["parameter"].get("parameter_name"))] = ("parameter", None)
        elif isinstance(spec.get("buffer"), dict):
            persistent = spec["buffer"].get("persistent")
            kinds[str(spec["buffer"].get("buffer_name"))] = (
                "buffer",
                persistent if isinstance(persistent, bool) else None,
            )
    return kinds


class Pt2Source(Source):
    """The exported program's state (parameters and buffers) with its module tree."""

    def __init__(self, path: Path, label: str, zf: zipfile.ZipFile) -> None:
        self.path, self._zf = path, zf
        self._size = path.stat().st_size
        names = zf.namelist()
        root = (
            next(n for n in names if n.endswith("/archive_format") and n.count("/") == 1).partition(
                "/"
            )[0]
            + "/"
        )
        if self._member(f"{root}archive_format").strip() != b"pt2":
            raise UnknownFormatError(f"{label} is a zip archive whose archive_format is not pt2")
        models = sorted(n for n in names if n.startswith(f"{root}models/") and n.endswith(".json"))
        if not models:
            raise UnknownFormatError(
                f"{label} is a .pt2 archive without an exported program (models/*.json): an "
                "AOTInductor package, which modinspect does not read"
            )
        model_file = (
            f"{root}models/model.json" if f"{root}models/model.json" in models else models[0]
        )
        model_name = model_file.rpartition("/")[2].removesuffix(".json")
        program, node_arrays = load_program(
            self._member(model_file, MAX_PROGRAM_BYTES), f"{self.path}: {model_file}"
        )
        gm = program.get("graph_module")
        if not isinstance(gm, dict):
            raise CorruptFileError(f"{label}: {model_file} holds no graph_module")
        if f"{root}data/weights/{model_name}.pt" in names:
            raise UnknownFormatError(
                f"{label} keeps its weights in the legacy pickled {model_name}.pt; re-save it "
                "with torch.export.save from torch >= 2.6"
            )
        kinds = _signature_kinds((gm.get("signature") or {}).get("input_specs"))
        self._payloads: dict[str, _Payload] = {}
        tensors: list[TensorInfo] = []
        skipped: list[str] = []
        for folder, config_name in (
            ("weights", "weights_config"),
            ("constants", "constants_config"),
        ):
            member = f"{root}data/{folder}/{model_name}_{config_name}.json"
            if member not in names:
                continue
            config = self._json(member).get("config")
            if not isinstance(config, dict):
                raise CorruptFileError(f"{label}: {member} has no config map")
            for name, meta in config.items():
                if folder == "constants" and name not in kinds:
                    skipped.append(name)  # a lifted tensor constant, not part of the state dict
                    continue
                info = self._tensor(str(name), meta, f"{root}data/{folder}/", kinds, label, skipped)
                if info is not None:
                    tensors.append(info)
        calls = gm.get("module_call_graph")
        nodes = graph_nodes(gm.get("graph"), node_arrays)
        types = module_types(nodes.stacks)
        fqns = (
            [str(e.get("fqn")) for e in calls if isinstance(e, dict)]
            if isinstance(calls, list)
            else [""]
        )
        modules = [ModuleInfo(name=f, type=types.get(f)) for f in dict.fromkeys(["", *fqns])]
        notes = [
            f"torch.export program '{model_name}': {nodes.count} graph nodes, {len(modules)} modules in the call "
            "graph; read from its JSON (no pickle loaded)"
        ]
        if skipped:
            notes.append(
                f"{len(skipped)} constants or pickled tensors not listed (e.g. {skipped[0]})"
            )
        version = program.get("torch_version")
        super().__init__(
            label=label,
            format="torch-export",
            tensors=tensors,
            modules=modules,
            notes=notes,
            metadata={"torch_version": str(version)} if version else {},
        )

    def _member(self, name: str, limit: int = 64 << 20) -> bytes:
        """A JSON member's bytes, refused past `limit` from the zip's directory before it inflates."""
        from modinspect.sources.torchfile import read_zip_member

        declared = self._zf.getinfo(name).file_size
        if declared > limit:
            raise CorruptFileError(
                f"{self.path}: {name} inflates to {declared:,} bytes, more than the "
                f"{limit >> 20} MiB this reader reads"
            )
        return read_zip_member(self._zf, name, self._size, str(self.path))

    def _json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self._member(name))
        except (ValueError, RecursionError) as exc:
            raise CorruptFileError(
                f"{self.path}: {name} is not valid JSON ({type(exc).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise CorruptFileError(f"{self.path}: {name} is not a JSON object")
        return data

    def _tensor(
        self,
        name: str,
        meta: object,
        folder: str,
        kinds: dict[str, tuple[str, bool | None]],
        label: str,
        skipped: list[str],
    ) -> TensorInfo | None:
        if not isinstance(meta, dict) or not isinstance(meta.get("tensor_meta"), dict):
            raise CorruptFileError(f"{label} describes {name!r} without tensor_meta")
        if meta.get("use_pickle"):
            skipped.append(name)  # a tensor subclass, saved with torch.save: not unpickled
            return None
        tm = meta["tensor_meta"]
        code = tm.get("dtype")
        known = dtypes.BY_SCALAR_TYPE.get(code) if type(code) is int else None
        if known is None:
            raise CorruptFileError(
                f"{label} gives {name!r} the unknown dtype code {tm.get('dtype')!r}"
            )
        dtype = known.name
        if tm.get("layout", _STRIDED) != _STRIDED:
            skipped.append(name)  # sparse and mkldnn layouts
            return None
        shape = _ints(tm.get("sizes"), f"{name!r} sizes", label)
        stride = _ints(tm.get("strides"), f"{name!r} strides", label)
        (offset,) = _ints(
            [tm.get("storage_offset", {"as_int": 0})], f"{name!r} a storage offset", label
        )
        if len(stride) != len(shape):
            raise CorruptFileError(
                f"{label} gives {name!r} {len(shape)} sizes but {len(stride)} strides"
            )
        if bounded_numel(shape) is None:
            raise CorruptFileError(
                f"{label} gives {name!r} sizes whose product reaches 2**63 elements"
            )
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or "/" in path_name:
            raise CorruptFileError(f"{label} gives {name!r} the payload name {path_name!r}")
        self._payloads[name] = _Payload(f"{folder}{path_name}", shape, stride, offset, dtype)
        kind, persistent = kinds.get(
            name, ("parameter" if meta.get("is_param") else "buffer", None)
        )
        numel = math.prod(shape)
        return TensorInfo(
            name,
            shape,
            dtype,
            dtypes.nbytes(dtype, numel),
            kind,  # type: ignore[arg-type]
            storage=f"{path_name}@{offset}:{shape}:{stride}" if numel else None,
            requires_grad=bool(tm.get("requires_grad")) if kind == "parameter" else None,
            persistent=persistent,
        )

    def _storage(self, name: str) -> tuple[_Payload, zipfile.ZipInfo]:
        """The payload and its zip entry, once the view is known to lie inside the bytes stored."""
        from modinspect.sources.torchfile import zip_member

        p = self._payloads[name]
        try:
            info = zip_member(self._zf, p.member, self._size)
        except KeyError:
            raise CorruptFileError(f"{self.path} lacks {p.member}, the data of {name!r}") from None
        except CorruptFileError as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None
        if info.file_size == 0 and all(p.shape):
            raise CorruptFileError(
                f"{self.path}: {name!r} was exported as a fake tensor and has no data"
            )
        check_view(
            str(self.path),
            name,
            p.shape,
            p.stride,
            p.offset,
            info.file_size // dtypes.itemsize(p.dtype),
        )
        return p, info

    def _flat(self, p: _Payload, info: zipfile.ZipInfo) -> torch.Tensor:
        """The whole storage as a 1-d tensor of the payload's dtype."""
        import torch

        from modinspect.sources.torchfile import ZIP_ERRORS

        itemsize = dtypes.itemsize(p.dtype)
        try:
            raw = bytearray(self._zf.read(info))
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None
        return from_little_endian(raw[: len(raw) // itemsize * itemsize], getattr(torch, p.dtype))

    def _read(self, name: str) -> torch.Tensor:
        import torch

        p, info = self._storage(name)
        if not math.prod(p.shape):
            return torch.empty(p.shape, dtype=getattr(torch, p.dtype))
        return self._flat(p, info).as_strided(p.shape, p.stride, p.offset).clone()

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        p, info = self._storage(name)
        if not math.prod(p.shape):
            return
        if not is_row_major(
            p.shape, p.stride
        ):  # gathered a chunk at a time: an expanded view is never whole
            yield from strided_chunks(self._flat(p, info), p.shape, p.stride, p.offset, chunk_elems)
            return
        with self._zf.open(info) as member:
            member.seek(dtypes.nbytes(p.dtype, p.offset))
            yield from read_chunks(member, math.prod(p.shape), p.dtype, chunk_elems, str(self.path))

    def close(self) -> None:
        self._zf.close()
