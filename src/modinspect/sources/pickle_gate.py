"""A weights-only unpickler that never calls anything a checkpoint names, except an allowlist.

Two layers. First a static scan (`scan_globals`) lists every global the pickle would import,
without executing a single opcode; anything outside the allowlist is refused by name. Then a
restricted `pickle.Unpickler` rebuilds the object graph with stand-ins: storages become
`StorageRef`s and tensors become `TensorRef`s, so listing a checkpoint reads no tensor data.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import io
import pickle
import pickletools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from modinspect.errors import CorruptFileError, UnsafePickleError

# torch's legacy typed-storage class names -> dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UInt16Storage": "uint16",
    "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
    "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2",
    "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
    "Float8_e5m2fnuzStorage": "float8_e5m2fnuz",
    "Float8_e8m0fnuStorage": "float8_e8m0fnu",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "UntypedStorage": "uint8",
}

TORCH_DTYPE_NAMES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "double", "float",
    "half", "long", "int", "short", "cfloat", "cdouble",
}


class _Sealed:
    """Refuses the pickle BUILD opcode, which would otherwise rewrite an object's attributes.

    Without this a crafted pickle could bypass the checks of the rebuild functions, or rewrite
    the allowlist's shared StorageType/DtypeRef objects and so corrupt every later file read.
    """

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise CorruptFileError("tries to modify an object the weights-only gate created")


@dataclass(frozen=True)
class StorageType(_Sealed):
    dtype: str


@dataclass(frozen=True)
class DtypeRef(_Sealed):
    name: str


@dataclass(frozen=True)
class StorageRef(_Sealed):
    """A storage named by the pickle; its bytes live elsewhere (a zip entry, or after the pickle)."""

    key: str
    dtype: str
    location: str
    numel: int


@dataclass(frozen=True)
class TensorRef(_Sealed):
    """A tensor described by the pickle: which storage, where in it, what shape."""

    storage: StorageRef | None  # None for meta tensors, which have no data
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool
    is_parameter: bool = False


def _as_ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        raise CorruptFileError(f"a tensor's {what} is not a tuple of non-negative integers")
    return tuple(value)


def _shape_and_stride(size: object, stride: object) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape, strides = _as_ints(size, "size"), _as_ints(stride, "stride")
    if len(shape) != len(strides):
        raise CorruptFileError(f"a tensor has {len(shape)} dimensions but {len(strides)} strides")
    return shape, strides


def _rebuild_tensor_v2(storage: object, offset: object, size: object, stride: object, requires_grad: object = False,
                       backward_hooks: object = None, metadata: object = None) -> TensorRef:
    if not isinstance(storage, StorageRef) or type(offset) is not int or offset < 0:
        raise CorruptFileError("a tensor refers to something that is not a storage")
    return TensorRef(storage, offset, *_shape_and_stride(size, stride), storage.dtype, bool(requires_grad))


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> TensorRef:
    return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object, state: object = None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise CorruptFileError("a parameter wraps something that is not a tensor")
    return TensorRef(data.storage, data.offset, data.shape, data.stride, data.dtype, bool(requires_grad), True)


def _rebuild_meta(dtype: object, size: object, stride: object, requires_grad: object) -> TensorRef:
    name = dtype.name if isinstance(dtype, DtypeRef) else "unknown"
    return TensorRef(None, 0, *_shape_and_stride(size, stride), name, bool(requires_grad))


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # Tensor subclasses and tensors carrying Python attributes; only plain Tensor/Parameter allowed.
    if not callable(func) or func not in _REBUILDERS or not isinstance(args, tuple):
        raise CorruptFileError("a tensor is rebuilt by an unexpected function")
    return func(*args)


def _codecs_encode(obj: object, encoding: object = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); other codecs could decompress bombs.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError("a pickle asks for an unexpected codec")
    return codecs.encode(obj, "latin1")


def _torch_size(*args: object) -> tuple[object, ...]:
    return tuple(args[0]) if args and isinstance(args[0], tuple | list) else tuple(args)


class _Marker(_Sealed):
    """A harmless stand-in for a type the pickle names but we never instantiate (torch.Tensor)."""

    def __init__(self, name: str) -> None:
        self.name = name


_REBUILDERS: set[Callable[..., Any]] = {_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter, _rebuild_meta}

SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _rebuild_meta,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch._tensor", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
    ("torch", "Size"): _torch_size,
    ("torch", "device"): str,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch.storage", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): DtypeRef(name) for name in TORCH_DTYPE_NAMES},
}

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_UNKNOWN = object()  # a stack value the scan cannot know statically
_MARK = object()  # the MARK opcode's marker


def scan_globals(data: bytes | IO[bytes]) -> list[str]:
    """Every global one pickle would import, as 'module.name', found without executing it.

    STACK_GLOBAL takes its names from the stack, so the scan runs the pickle's stack machine on
    stand-ins: strings are tracked through the stack and the memo (PUT, MEMOIZE, GET, DUP, POP,
    POP_MARK, ...), everything else is an unknown value. A name it cannot resolve statically is
    reported as '<dynamic>' (and so refused). Names are reported as Python 3 would import them:
    protocol 0-2 pickles spell builtins.exec as __builtin__.exec.
    """
    stream: IO[bytes] = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    if not isinstance(stream, io.BytesIO):  # a BytesIO never reads more than it holds
        stream = _Bounded.wrap(stream)
    try:
        with quiet_decoding():
            return _scan(stream)
    except (ValueError, EOFError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"is not a readable pickle ({exc})") from None


_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}


def _scan(stream: IO[bytes]) -> list[str]:
    found: list[str] = []
    protocol = 0
    memo: dict[int, object] = {}
    stack: list[object] = []
    try:
        start: int | None = stream.tell()
    except OSError:  # not seekable: no offsets to check memo indices against
        start = None
    for op, arg, pos in pickletools.genops(stream):
        name = op.name
        if name in _STRING_OPS:
            stack.append(arg)
        elif name in _PUTS:
            index = int(str(arg))
            # The C unpickler grows its memo array to twice an index, and fills it: LONG_BINPUT 2^28 in a
            # 10-byte pickle takes 4 GB. A pickler numbers the memo from 0, one PUT at a time, so no
            # index exceeds the opcode's offset.
            if pos is not None and start is not None and index > pos - start:
                raise ValueError(f"memo index {index:,} at byte {pos - start:,}, past any index a pickler would use")
            memo[index] = stack[-1] if stack else _UNKNOWN
        elif name in _GETS:
            stack.append(memo.get(int(str(arg)), _UNKNOWN))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _UNKNOWN
        elif name == "DUP":
            stack.append(stack[-1] if stack else _UNKNOWN)
        else:
            if name == "PROTO" and isinstance(arg, int):
                protocol = arg
            elif name == "GLOBAL" or name == "INST":
                module, _, attr = str(arg).partition(" ")
                found.append(_python3_name(module, attr, protocol))
            elif name == "STACK_GLOBAL":
                below, top = stack[-2:] if len(stack) >= 2 else (None, None)
                ok = isinstance(below, str) and isinstance(top, str)
                found.append(_python3_name(str(below), str(top), protocol) if ok else "<dynamic>")
            elif name == "EXT1" or name == "EXT2" or name == "EXT4":
                found.append(f"<copyreg extension {arg}>")
            elif name == "FRAME" and isinstance(stream, _Bounded) and isinstance(arg, int):
                left = stream.remaining()
                if arg > left:  # the C unpickler reads a frame whole, with read(n)
                    raise ValueError(f"a frame of {arg:,} bytes, but only {left:,} remain")
            _simulate(op, stack)
    return found


@contextlib.contextmanager
def quiet_decoding() -> Iterator[None]:
    """Text opcodes (STRING, GLOBAL) are escape-decoded, which warns about invalid escapes in the file.

    That is the file's problem, and reported as such when it matters; a warning would only escape
    as an exception where warnings are errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _python3_name(module: str, name: str, protocol: int) -> str:
    """'module.name' as pickle.Unpickler.find_class would import it (fix_imports for protocols < 3)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


# opcode name -> (values it pops below a MARK or without one, whether it pops down to a MARK, what it pushes)
_EFFECTS: dict[str, tuple[int, bool, tuple[object, ...]]] = {}


def _simulate(op: pickletools.OpcodeInfo, stack: list[object]) -> None:
    """Apply `op`'s effect on the stack as pickletools documents it, with unknown results."""
    effect = _EFFECTS.get(op.name)
    if effect is None:
        before = op.stack_before
        to_mark = pickletools.markobject in before
        fixed = before.index(pickletools.markobject) if to_mark else len(before)
        pushes = tuple(_MARK if after is pickletools.markobject else _UNKNOWN for after in op.stack_after)
        effect = _EFFECTS[op.name] = (fixed, to_mark, pushes)
    fixed, to_mark, pushes = effect
    if to_mark:  # pops everything down to the topmost MARK, then `fixed` more
        while stack and stack.pop() is not _MARK:
            pass
    if fixed:
        del stack[max(0, len(stack) - fixed):]
    stack.extend(pushes)


class _Bounded:
    """A seekable stream whose reads never ask for more bytes than remain in it.

    BINBYTES8, BINUNICODE8, LONG4 and their kin declare a length that `pickletools` passes straight
    to `read(n)`, and a buffered file allocates `n` bytes before it reads any: a 14-byte file that
    declares 2^40 would ask for a terabyte. Clipped to what remains, the read comes back short and
    the scan reports a truncated pickle instead.
    """

    def __init__(self, stream: IO[bytes], end: int) -> None:
        self._stream = stream
        self._end = end
        self.tell = stream.tell  # called for every opcode: no wrapper in between
        self.readline = stream.readline

    @classmethod
    def wrap(cls, stream: IO[bytes]) -> IO[bytes]:
        try:
            here = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(here)
        except (OSError, ValueError):  # not seekable: nothing to measure against
            return stream
        return cls(stream, end)  # type: ignore[return-value]

    def remaining(self) -> int:
        return max(0, self._end - self._stream.tell())

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and 0 <= n <= 1 << 16:  # small reads cannot allocate much: the common case, fast
            return self._stream.read(n)
        left = self.remaining()
        return self._stream.read(left if n is None or n < 0 else min(n, left))


def global_name(module: str, name: str) -> str:
    return f"{module}.{name}"


def is_safe_global(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return (module, name) in SAFE_GLOBALS


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles with the allowlist only; storages are resolved by `storage_loader`."""

    def __init__(self, file: IO[bytes], storage_loader: Callable[[tuple[object, ...]], StorageRef]) -> None:
        super().__init__(file, encoding="utf-8")
        self._storage_loader = storage_loader

    def load(self) -> Any:
        with quiet_decoding():
            return super().load()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError("<checkpoint>", [global_name(module, name)]) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CorruptFileError("refers to an unsupported persistent object")
        return self._storage_loader(pid)


def storage_from_pid(pid: tuple[object, ...]) -> StorageRef:
    """('storage', type, key, location, numel[, view_metadata]) -> StorageRef."""
    if len(pid) < 5 or not isinstance(pid[1], StorageType) or type(pid[4]) is not int or pid[4] < 0:
        raise CorruptFileError("describes a storage it cannot name")
    return StorageRef(key=str(pid[2]), dtype=pid[1].dtype, location=str(pid[3]), numel=pid[4])
