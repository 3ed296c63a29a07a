"""TorchScript archives, read without running them.

`torch.jit.load` compiles the archive's code/ and runs its TorchScript `__setstate__` methods,
which can call `torch.save(obj, path)` and so write any file the user can write. This reader
never does. An archive is a zip file:

- `data.pkl` pickles the module objects as `__torch__.*` classes plus attribute dicts, with
  tensors as persistent ids into `data/`: the weights-only gate rebuilds it with stand-ins;
- `code/__torch__/...py` declares each class, its base (`Module`), `__parameters__` and
  `__buffers__`: read as text by torchscript_code's lexer, never compiled or executed.
- a module with a custom `__getstate__` (and C++ custom classes such as torch.ao's
  `LinearPackedParamsBase`) is pickled with what `__getstate__` returned instead of an attribute dict:
  its tensors are listed from that state as data (`__setstate__` never runs), the packed params as
  their state_dict names them (`_packed_params._packed_params.0` the int8 weight, `.1` the bias), a
  quantized convolution's as `weight` and `bias`.

Together they give the module tree, class names, parameters and buffers `torch.jit.load` would.
`--unsafe-pickle` still loads the real ScriptModule, for commands that run it.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from modinspect.errors import CorruptFileError
from modinspect.sources.base import Source
from modinspect.sources.module import ModuleSource
from modinspect.sources.pickle.gate import Gate, storage_from_pid
from modinspect.sources.pickle.module import ModuleParts, walk_modules
from modinspect.sources.pickle.refs import SparseRef, TensorRef
from modinspect.sources.pickle.standins import StandIn, standin_name
from modinspect.sources.torchfile import (
    ZipTorchSource,
    read_pickle_member,
    standin_note,
    tensor_infos,
    zip_member,
)
from modinspect.sources.torchscript_code import MAX_CODE_BYTES, parse_code

UNSAFE_WARNING = "--unsafe-pickle: torch.jit.load runs the code of {label} (its TorchScript __setstate__ methods)"


def read_code(
    zf: zipfile.ZipFile, prefix: str, archive_size: int, path: Path, gate: Gate
) -> dict[str, str]:
    """The texts of code/__torch__/**.py, by the TorchScript module name each defines.

    Their inflated sizes are added up from the zip's directory, and refused past MAX_CODE_BYTES, before
    any is read.
    """
    root = f"{prefix}code/"
    members = [n for n in zf.namelist() if n.startswith(root + "__torch__") and n.endswith(".py")]
    total = 0
    for name in members:
        try:
            total += zip_member(zf, name, archive_size).file_size
        except CorruptFileError as exc:
            raise CorruptFileError(f"{path} is a damaged zip file ({exc})") from None
    if total > MAX_CODE_BYTES:
        raise CorruptFileError(
            f"{path} holds {total:,} bytes of TorchScript code (code/*.py inflated), more than the "
            f"{MAX_CODE_BYTES >> 20} MiB this reader parses"
        )
    texts: dict[str, str] = {}
    for name in members:
        raw = read_pickle_member(zf, name, archive_size, path, gate)
        assert raw is not None
        module = name[len(root) : -len(".py")].replace("/", ".")
        texts[module] = raw.decode("utf-8", errors="replace")
    return texts


class TorchScriptSource(ZipTorchSource):
    """A TorchScript archive's module tree and tensors, with no code compiled or run."""

    def __init__(
        self, path: Path, label: str, zf: zipfile.ZipFile, prefix: str, gate: Gate
    ) -> None:
        self._attach(path, zf, prefix)
        data = read_pickle_member(zf, f"{prefix}data.pkl", self._size, path, gate)
        assert data is not None
        root, _ = gate.load(data, 0, storage_from_pid)
        # constants.pkl holds tensor constants of the code, not module state; it is read only so that a
        # hostile one is refused by name like any other pickle.
        constants = read_pickle_member(
            zf, f"{prefix}constants.pkl", self._size, path, gate, optional=True
        )
        if constants is not None:
            gate.load(constants, 0, storage_from_pid)
        self._classes = parse_code(read_code(zf, prefix, self._size, path, gate), str(path))
        if not self._is_module(root):
            raise CorruptFileError(
                f"{path} is not a loadable TorchScript archive: its data.pkl holds no module declared in its code/"
            )
        self._opaque: list[str] = []
        walked = walk_modules(root, self._parts)
        self._refs = {
            k: v for k, v in walked.tensors.items() if isinstance(v, TensorRef | SparseRef)
        }
        # __torch__ classes are the format itself; any other stand-in is worth a word.
        notes = standin_note(gate, exclude="__torch__.")
        if self._opaque:
            notes.append(
                f"{', '.join(self._opaque[:4])}{' …' if len(self._opaque) > 4 else ''} "
                f"{'has' if len(self._opaque) == 1 else 'have'} a custom __setstate__, which only --unsafe-pickle "
                "runs: any tensors it restores are not listed"
            )
        Source.__init__(
            self,
            label=label,
            format="torchscript",
            tensors=tensor_infos(self._refs, walked.kinds),
            modules=walked.modules,
            notes=notes,
        )
        self._cache = None

    def _is_module(self, obj: object) -> bool:
        if not isinstance(obj, StandIn):
            return False
        declared = self._classes.get(standin_name(obj))
        return declared is not None and declared.base == "Module"

    def _parts(self, obj: object) -> ModuleParts | None:
        if not self._is_module(obj):
            return None
        assert isinstance(obj, StandIn)
        qualname = standin_name(obj)
        declared = self._classes[qualname]
        attributes = obj.attributes
        training = attributes.get("training")
        parts = ModuleParts(
            type=qualname.rpartition(".")[2],
            training=training if isinstance(training, bool) else None,
        )
        if (
            not attributes and obj.state is not None
        ):  # what its __getstate__ returned; __setstate__ never runs
            state = state_tensors(obj.state)
            if not state:
                self._opaque.append(qualname.rpartition(".")[2])
            conv = ao_conv_weights(qualname, obj.state)
            if conv:  # named and kinded as the module's state_dict has them
                parts.parameters += conv
            else:
                parts.buffers += [(name, value, True) for name, value in state]
        params, buffers = set(declared.parameters), set(declared.buffers)
        for attr, value in attributes.items():
            if attr in params:
                parts.parameters.append((attr, value))
            elif attr in buffers:
                parts.buffers.append(
                    (attr, value, True)
                )  # a ScriptModule's state_dict holds every buffer
            elif self._is_module(value):
                parts.children.append((attr, value))
            elif isinstance(value, StandIn) and standin_name(value).startswith(TORCH_CLASSES):
                # A C++ custom class (torch.ao's packed params): its __getstate__'s tensors, as data.
                state = [(f"{attr}.{name}", v) for name, v in state_tensors(value.state)]
                if "PackedParams" in standin_name(
                    value
                ):  # the quantized weight and bias: parameters
                    parts.parameters += state
                else:
                    parts.buffers += [(name, v, True) for name, v in state]
        return parts


TORCH_CLASSES = "__torch__.torch.classes."
MAX_STATE_ENTRIES = 1 << 12


def ao_conv_weights(qualname: str, state: object) -> list[tuple[str, TensorRef | SparseRef]]:
    """A torch.ao quantized convolution's weight and bias from its `__getstate__` tuple, by the names its
    state_dict gives them; [] for any other module or state.

    torch.ao.nn.quantized's `_ConvNd.__getstate__` (Conv1d/2d/3d, ConvTranspose, and the fused ConvReLU and
    ConvAdd built on it) returns 15 entries, the unpacked quantized weight at 10 and the bias (or None) at 11.
    """
    if not (
        qualname.startswith("__torch__.torch.")
        and ".quantized.modules.conv" in qualname
        and isinstance(state, tuple)
        and len(state) == 15
    ):
        return []
    weight, bias = state[10], state[11]
    if not isinstance(weight, TensorRef) or weight.quantizer is None:
        return []
    found: list[tuple[str, TensorRef | SparseRef]] = [("weight", weight)]
    return found + ([("bias", bias)] if isinstance(bias, TensorRef) else [])


def state_tensors(state: object) -> list[tuple[str, TensorRef | SparseRef]]:
    """The tensors in a `__getstate__` result, named by position in a tuple or list (`0`, `1`; `1.0` one list
    down, as torch.ao's conv packed params nest theirs) or by key in a dict."""
    if isinstance(state, dict):
        entries: list[tuple[str, object]] = [
            (k, v) for k, v in list(state.items())[:MAX_STATE_ENTRIES] if isinstance(k, str)
        ]
    elif isinstance(state, tuple | list):
        entries = [(str(i), v) for i, v in enumerate(state[:MAX_STATE_ENTRIES])]
    else:
        return []
    found: list[tuple[str, TensorRef | SparseRef]] = []
    for name, value in entries:
        if isinstance(value, TensorRef | SparseRef):
            found.append((name, value))
        elif isinstance(value, tuple | list):
            found += [
                (f"{name}.{i}", v)
                for i, v in enumerate(value[:MAX_STATE_ENTRIES])
                if isinstance(v, TensorRef | SparseRef)
            ]
    return found[:MAX_STATE_ENTRIES]  # a hostile state of 4k lists of 4k tensors lists 4k, not 16M


def open_torchscript(
    path: Path, label: str, zf: zipfile.ZipFile, prefix: str, gate: Gate, unsafe: bool
) -> Source:
    """The archive read as data; with `unsafe`, the real ScriptModule from torch.jit.load."""
    if not unsafe:
        return TorchScriptSource(path, label, zf, prefix, gate)
    import torch

    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but its archives are still everywhere.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path} is not a loadable TorchScript archive: {first}") from exc
    source = ModuleSource(model, label, "torchscript")
    source.warnings.append(UNSAFE_WARNING.format(label=label))
    return source
