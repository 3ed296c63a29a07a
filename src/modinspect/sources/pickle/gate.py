"""A weights-only unpickler that never calls anything a checkpoint names, except an allowlist.

Three steps for every pickle:

1. `check_pickle` walks its opcodes without building anything and refuses shapes that would make
   the C unpickler allocate far more than the file holds (memo and frame bombs, object floods).
2. A restricted `pickle.Unpickler` rebuilds the object graph. The allowlist (`SAFE_GLOBALS`) is
   what may be *called*: our own rebuild functions, which turn storages into `StorageRef`s and
   tensors into `TensorRef`s, so listing a checkpoint reads no tensor data. Any other global
   becomes an inert stand-in (`pickle/standins.py`) that records what the pickle gave it and never
   imports or calls anything.
3. Globals that only make sense as code execution (os.system, builtins.exec, subprocess, ...) are
   refused by name once the pickle is read, so the user hears that the file is hostile. The
   refusal is a courtesy, not the protection: a stand-in for them would run nothing either.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import importlib
import io
import math
import pickle
import struct
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnsafePickleError, UsageError
from modinspect.sources.pickle.check import (
    DEFAULT_MAX_PICKLE,
    PickleTooLargeError,
    format_size,
    measure_pickle,
)
from modinspect.sources.pickle.refs import (
    _COPY_COST,
    BoundedCall,
    CopyBudget,
    DtypeRef,
    LayoutRef,
    QSchemeRef,
    SparseRef,
    StorageRef,
    StorageType,
    SubclassRef,
    TensorRef,
    _Sealed,
)
from modinspect.sources.pickle.shadow import (
    BUILTIN_CALLS,
    CALL_IDENTITY,
    CALL_REAL,
    CALL_STANDIN,
    CALL_VALUE,
)
from modinspect.sources.pickle.standins import StandIn, StandInRegistry, safe_reconstructor

# torch's legacy typed-storage class names -> dtype name. Part of the allowlist: tests/test_dtypes.py pins
# this set, so a row added to the dtype table cannot widen what the gate lets a pickle name.
STORAGE_DTYPES: dict[str, str] = {
    **{d.storage: d.name for d in dtypes.DTYPES if d.storage is not None},
    "UntypedStorage": "uint8",
}

TORCH_DTYPE_NAMES = {
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    # torch.int1 ... torch.uint7: torchao's target_dtype names them
    *(f"{u}int{b}" for u in ("", "u") for b in range(1, 8)),
    "double",
    "float",
    "half",
    "long",
    "int",
    "short",
    "cfloat",
    "cdouble",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "float4_e2m1fn_x2",
    "complex32",
    "chalf",
    "bits8",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
}


def _as_ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        raise CorruptFileError(f"a tensor's {what} is not a tuple of non-negative integers")
    return tuple(value)


def _shape_and_stride(size: object, stride: object) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape, strides = _as_ints(size, "size"), _as_ints(stride, "stride")
    if len(shape) != len(strides):
        raise CorruptFileError(f"a tensor has {len(shape)} dimensions but {len(strides)} strides")
    return shape, strides


def _storage_arg(storage: object, offset: object) -> StorageRef:
    if not isinstance(storage, StorageRef) or type(offset) is not int or offset < 0:
        raise CorruptFileError("has a tensor that refers to something that is not a storage")
    return storage


def _rebuild_tensor_v2(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> TensorRef:
    ref = _storage_arg(storage, offset)
    return TensorRef(ref, offset, *_shape_and_stride(size, stride), ref.dtype, bool(requires_grad))  # type: ignore[arg-type]


def _rebuild_tensor_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> TensorRef:
    # dtypes without a typed storage class (uint16, float8, ...) sit on an untyped, byte-counted storage.
    ref = _storage_arg(storage, offset)
    if not isinstance(dtype, DtypeRef):
        raise CorruptFileError("has a tensor that names a dtype that is not a torch dtype")
    return TensorRef(
        ref,
        offset,  # type: ignore[arg-type]
        *_shape_and_stride(size, stride),
        dtypes.canonical(dtype.name),
        bool(requires_grad),
    )


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> TensorRef:
    return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_qtensor(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    quantizer_params: object,
    requires_grad: object,
    backward_hooks: object,
) -> TensorRef:
    ref = _storage_arg(storage, offset)
    if (
        not isinstance(quantizer_params, tuple)
        or not quantizer_params
        or not isinstance(quantizer_params[0], QSchemeRef)
    ):
        raise CorruptFileError("has a quantized tensor with no quantization scheme")
    scheme, *params = quantizer_params
    if not all(type(p) in (int, float) or isinstance(p, TensorRef) for p in params):
        # A TensorRef hashes its quantizer: numbers and tensors only, never a tuple tower.
        raise CorruptFileError("has a quantized tensor whose parameters are not numbers or tensors")
    quantizer = (scheme.name, *params)
    return TensorRef(
        ref,
        offset,  # type: ignore[arg-type]
        *_shape_and_stride(size, stride),
        ref.dtype,
        bool(requires_grad),
        quantizer=quantizer,
    )


def _rebuild_sparse_tensor(layout: object, data: object) -> SparseRef:
    if not isinstance(layout, LayoutRef) or not isinstance(data, tuple):
        raise CorruptFileError("has a sparse tensor with no layout")
    if layout.name == "sparse_coo" and len(data) in (3, 4):
        components, size = data[:2], data[2]
    elif layout.name in ("sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc") and len(data) == 4:
        components, size = data[:3], data[3]
    else:
        raise CorruptFileError(f"a sparse tensor with layout {layout.name} has {len(data)} parts")
    if not all(isinstance(c, TensorRef) for c in components):
        raise CorruptFileError("has a sparse tensor stored in something that is not a tensor")
    return SparseRef(layout.name, tuple(components), _as_ints(size, "size"))


def _rebuild_parameter(
    data: object, requires_grad: object, backward_hooks: object, state: object = None
) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise CorruptFileError("has a parameter that wraps something that is not a tensor")
    return TensorRef(
        data.storage,
        data.offset,
        data.shape,
        data.stride,
        data.dtype,
        bool(requires_grad),
        True,
        data.quantizer,
    )


def _rebuild_meta(dtype: object, size: object, stride: object, requires_grad: object) -> TensorRef:
    name = dtypes.canonical(dtype.name) if isinstance(dtype, DtypeRef) else "unknown"
    return TensorRef(None, 0, *_shape_and_stride(size, stride), name, bool(requires_grad))


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # Tensor subclasses and tensors carrying Python attributes; plain Tensor/Parameter, and wrapper subclasses
    # (torchao's) described from their state, never constructed.
    if not callable(func) or func not in _REBUILDERS or not isinstance(args, tuple):
        raise CorruptFileError("rebuilds a tensor with an unexpected function")
    built = func(*args)
    if isinstance(built, SubclassRef):
        return _subclass_state(built, state)
    return built


# A wrapper subclass stands for at most 8 elements per stored byte (1-bit packing).
MAX_SUBCLASS_BITS = 8
# Inner tensors of one subclass, nested ones' included (torchao's hold 2-6): a memoised subclass referenced
# under many keys of another, itself referenced under many keys, would otherwise multiply its parts.
MAX_SUBCLASS_PARTS = 64


def _rebuild_wrapper_subclass(
    cls: object,
    dtype: object,
    size: object,
    stride: object,
    storage_offset: object,
    layout: object,
    device: object,
    requires_grad: object = False,
) -> SubclassRef:
    """torch._utils._rebuild_wrapper_subclass: torch.load would construct `cls` (a stand-in class, or the
    real one --allow-global imported); here its name, shape and dtype are recorded, never calling it, and the
    state adds its inner tensors."""
    if not isinstance(cls, type):
        raise CorruptFileError("rebuilds a tensor subclass from something that is not a class")
    # A stand-in class; or the real one when --allow-global named it: described all the same, never called.
    name = cls.qualname if issubclass(cls, StandIn) else f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(dtype, DtypeRef):
        raise CorruptFileError("rebuilds a tensor subclass with a dtype that is not a torch dtype")
    shape, _ = _shape_and_stride(size, stride)
    return SubclassRef(
        name, shape, dtypes.canonical(dtype.name), (), None, False, bool(requires_grad)
    )


def _subclass_state(ref: SubclassRef, state: object) -> SubclassRef:
    """The subclass's inner tensors and small attributes, read from the state BUILD would have set."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict | None):
        state = state[0]  # (dict, slots)
    if not isinstance(state, dict):
        raise CorruptFileError(f"holds a {ref.cls} tensor with no attribute dict")
    parts: list[tuple[str, TensorRef]] = []
    block: tuple[int, ...] | None = None
    target: str | None = None
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, TensorRef):
            parts.append((key, value))
        elif isinstance(value, SubclassRef):  # an AffineQuantizedTensor's tensor_impl
            parts.extend((f"{key}.{name}", inner) for name, inner in value.parts)
        if len(parts) > MAX_SUBCLASS_PARTS:
            raise CorruptFileError(
                f"holds a {ref.cls} tensor of more than {MAX_SUBCLASS_PARTS} inner tensors"
            )
        elif key == "block_size" and isinstance(value, tuple | list) and len(value) <= 64:
            block = _as_ints(value, "block size")
        elif key == "target_dtype" and isinstance(value, DtypeRef):
            target = dtypes.canonical(value.name)
    stored = sum(dtypes.nbytes(t.dtype, math.prod(t.shape), unknown_bits=8) for _, t in parts)
    numel = math.prod(ref.shape)
    if numel > MAX_SUBCLASS_BITS * stored:
        raise CorruptFileError(
            f"holds a {ref.cls} tensor that claims {numel:,} elements but stores {stored:,} bytes"
        )
    activation = any(
        state.get(k) is not None for k in ("act_quant_kwargs", "activation_quantization")
    )
    return SubclassRef(
        ref.cls, ref.shape, ref.dtype, tuple(parts), block, activation, ref.requires_grad, target
    )


def _codecs_encode(obj: object, encoding: object = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); other codecs could decompress bombs.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError("asks for an unexpected codec")
    return codecs.encode(obj, "latin1")


def _torch_size(*args: object) -> tuple[object, ...]:
    return tuple(args[0]) if args and isinstance(args[0], tuple | list) else tuple(args)


def _torch_device(kind: object, index: object = None) -> str:
    # torch.device('cuda', 0) in a pickle; str(b'ab', 'hex') would look up a codec instead.
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise CorruptFileError("names a device that is not a device")
    return kind if index is None else f"{kind}:{index}"


def _get_layout(name: object) -> LayoutRef:
    if not isinstance(name, str) or name not in _LAYOUTS:
        raise CorruptFileError("names an unknown tensor layout")
    return LayoutRef(name.removeprefix("torch."))


_LAYOUTS = {
    f"torch.{n}"
    for n in ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")
}


def _identity(value: object, *_: object) -> object:
    return value


def _tensor_from_id(value: object) -> object:
    return value if type(value) is int else None


class _Marker(_Sealed):
    """A harmless stand-in for a type the pickle names but we never instantiate (torch.Tensor)."""

    def __init__(self, name: str) -> None:
        self.name = name


_REBUILDERS: set[Callable[..., Any]] = {
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_tensor,
    _rebuild_parameter,
    _rebuild_meta,
    _rebuild_qtensor,
    _rebuild_wrapper_subclass,
}
QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_channel_affine_float_qparams",
    "per_tensor_symmetric",
    "per_channel_symmetric",
)

SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _rebuild_meta,
    ("torch._utils", "_rebuild_qtensor"): _rebuild_qtensor,
    ("torch._utils", "_rebuild_sparse_tensor"): _rebuild_sparse_tensor,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._utils", "_rebuild_wrapper_subclass"): _rebuild_wrapper_subclass,
    ("torch.serialization", "_get_layout"): _get_layout,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch._tensor", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "dict"): dict,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): safe_reconstructor,
    # TorchScript archives rebuild typed lists and dicts with these; each returns its argument.
    **{
        ("torch.jit._pickle", n): _identity
        for n in (
            "build_intlist",
            "build_tensorlist",
            "build_doublelist",
            "build_boollist",
            "restore_type_tag",
        )
    },
    ("torch.jit._pickle", "build_tensor_from_id"): _tensor_from_id,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch.storage", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): DtypeRef(name) for name in TORCH_DTYPE_NAMES},
    **{("torch", name): QSchemeRef(name) for name in QSCHEMES},
}

# What the allowlist's calls do, for the structural pass; the rest build a value from their arguments.
_SAFE_CALLS = {key: CALL_IDENTITY for key, value in SAFE_GLOBALS.items() if value is _identity}

# Modules whose every name is a way to run code, touch files or the network, or import more.
_CODE_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "posixpath",
        "ntpath",
        "subprocess",
        "sys",
        "importlib",
        "runpy",
        "shutil",
        "socket",
        "pty",
        "ctypes",
        "pickle",
        "_pickle",
        "marshal",
        "types",
        "code",
        "codeop",
        "pdb",
        "bdb",
        "timeit",
        "webbrowser",
        "multiprocessing",
        "asyncio",
        "threading",
        "_thread",
        "signal",
        "tempfile",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "telnetlib",
        "operator",
        "_operator",
        "io",
        "_io",
        "inspect",
        "commands",
        "platform",
        "popen2",
        "cProfile",
        "profile",
        "trace",
        "sqlite3",
        "shelve",
        "dbm",
        "glob",
        "fileinput",
        "zipimport",
        "pkgutil",
        "site",
        "ensurepip",
        "venv",
        "distutils",
        "setuptools",
        "pip",
        "requests",
        "imp",
        "gc",
        "weakref",
        "copyreg",
        "_posixsubprocess",
        "select",
        "mmap",
        "resource",
    }
)
_CODE_BUILTINS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "open",
        "input",
        "breakpoint",
        "globals",
        "locals",
        "vars",
        "exit",
        "quit",
        "help",
        "memoryview",
        "print",
        "__build_class__",
        "super",
        "type",
        "object",
        "classmethod",
        "staticmethod",
        "property",
        "dir",
        "id",
        "hash",
        "iter",
        "next",
        "map",
        "filter",
        "apply",
        "execfile",
        "reload",
        "file",
    }
)
# torch's own ways to load more pickles, compile code or call operators.
_CODE_TORCH = (
    "torch.load",
    "torch.save",
    "torch.hub",
    "torch.jit",
    "torch.ops",
    "torch._C",
    "torch.package",
    "torch.storage._load_from_bytes",
    "torch.serialization",
    "torch.utils.cpp_extension",
    "torch._dynamo",
    "torch.fx",
    "torch._ops",
    "torch.compile",
    "torch.library",
    "torch._inductor",
    "numpy.load",
    "numpy.lib.npyio",
    "numpy.testing",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.ctypeslib",
)


# Callables outside those modules that start a process, open a file or a connection when called: a file
# naming them lists (as stand-ins, with a warning that torch.load would call them), but --allow-global never
# builds them for real and the notes never suggest it.
_RUNNER_NAMES = frozenset(
    {
        "uuid._get_command_stdout",
        "uuid._popen",
        "uuid._find_mac",
        "uuid._find_mac_near_keyword",
        "uuid._find_mac_under_heading",
        "_osx_support._read_output",
        "_osx_support._find_build_tool",
        "_osx_support._find_executable",
        "logging.FileHandler",
        "logging.basicConfig",
        "logging.config.fileConfig",
        "logging.config.dictConfig",
        "logging.config.listen",
        "_aix_support._read_cmd_output",
        "ctypes.util.find_library",
        "torch.utils.collect_env.run",
        "torch.utils.collect_env.run_and_read_all",
        "torch.utils.collect_env.run_and_parse_first_match",
        "torch.utils.collect_env.run_and_return_first_line",
    }
)
_RUNNER_MODULES = (
    "imaplib",
    "poplib",
    "nntplib",
    "smtpd",
    "xmlrpc",
    "logging.handlers",
    "logging.config",
    "torch.utils.collect_env",
    "_osx_support",
    "_aix_support",
    "zipfile",
    "tarfile",
    "bz2",
    "gzip",
    "lzma",
    "zipapp",
    "compileall",
    "py_compile",
    "pydoc",
    "idlelib",
    "tkinter",
    "turtle",
    "doctest",
    "unittest",
    "cgi",
    "cgitb",
    "wsgiref",
    "socketserver",
    "ssl",
    "asynchat",
    "asyncore",
    "mailbox",
    "ensurepip",
    "sysconfig",
    "pstats",
    "filecmp",
    "netrc",
    "mimetypes",
    "pathlib.Path.write",
)


def runs_code_when_called(dotted: str) -> bool:
    """True for a global that runs code, a process, or opens files or connections when called: what
    --allow-global refuses to build and the notes never suggest (a superset of `is_code_global`)."""
    return (
        is_code_global(dotted)
        or dotted in _RUNNER_NAMES
        or any(dotted == m or dotted.startswith(m + ".") for m in _RUNNER_MODULES)
    )


def check_allow_globals(names: frozenset[str] | tuple[str, ...]) -> None:
    """Refuse --allow-global for a name that can run code when called: it would run with the file's arguments."""
    for name in names:
        if runs_code_when_called(name):
            raise UsageError(
                f"--allow-global {name}: {name} can run code or commands when called, so it is never built "
                "for real; pass --unsafe-pickle only if you trust the file"
            )


# Classes whose construction from a pickle only stores data: calling them is what they are for. Anything
# else the pickle calls is named in a warning ("torch.load would call X"), even though nothing ran here.
_DATA_CLASSES = frozenset(
    {
        "argparse.Namespace",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
        "collections.deque",
        "collections.ChainMap",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "datetime.date",
        "datetime.time",
        "datetime.datetime",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "functools.partial",
        "copyreg._reconstructor",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.parameter.UninitializedBuffer",
    }
)
_DATA_PREFIXES = ("omegaconf.nodes.", "numpy.dtypes.", "torch.nn.modules.", "torch.ao.nn.")


def is_data_class(dotted: str) -> bool:
    """True for a global known to only store data when a pickle calls it (a Namespace, a torch.nn layer)."""
    if dotted in _DATA_CLASSES or dotted.startswith(_DATA_PREFIXES):
        return True
    module, _, name = dotted.rpartition(".")
    return module == "builtins" and _is_inert_builtin(name)


# torch's pure tensor functions (torch.nn.functional's gelu is torch._C._nn.gelu): what a pickled module keeps
# as an attribute (transformers' GELUActivation), computing on tensors only.
_PURE_TORCH = (
    "torch._C._nn.",
    "torch._C._special.",
    "torch._C._linalg.",
    "torch._C._fft.",
    "torch._C._nested.",
    "torch._C._sparse.",
)


def is_code_global(dotted: str) -> bool:
    """True for a global whose only use in a pickle is to run code: refused by name, never stood in for.

    torch's own such names (torch.load, torch._C...) are refused only when the pickle calls them
    (`calls_to_refuse`): a reference kept as data is a stand-in like any other.
    """
    if dotted.startswith(_PURE_TORCH):
        return False
    module, _, name = dotted.rpartition(".")
    if module.split(".", 1)[0] in _CODE_MODULES:
        return True
    if module == "builtins":
        return not _is_inert_builtin(name)
    return any(dotted == p or dotted.startswith(p + ".") for p in _CODE_TORCH)


# Builtin functions that compute on values and cannot reach code, files or imports.
_INERT_BUILTIN_FUNCTIONS = frozenset(
    {
        "abs",
        "all",
        "any",
        "ascii",
        "bin",
        "callable",
        "chr",
        "divmod",
        "format",
        "hex",
        "isinstance",
        "issubclass",
        "len",
        "max",
        "min",
        "oct",
        "ord",
        "pow",
        "repr",
        "round",
        "sorted",
        "sum",
    }
)


def _is_inert_builtin(name: str) -> bool:
    # Builtin data types (int, str, bytes, range...) and pure functions are harmless to stand in for.
    import builtins

    if name in _CODE_BUILTINS or name.startswith("_"):
        return False
    if name in _INERT_BUILTIN_FUNCTIONS:
        return True
    value = getattr(builtins, name, None)
    return isinstance(value, type) and not issubclass(value, BaseException)


def global_name(module: str, name: str) -> str:
    return f"{module}.{name}"


def is_safe_global(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return (module, name) in SAFE_GLOBALS


def python3_name(module: str, name: str) -> tuple[str, str]:
    """(module, name) as Python 3 would import them: protocol 0-2 pickles spell builtins as __builtin__."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


@dataclass(frozen=True)
class GatePolicy:
    """What the gate may do with globals outside the allowlist, and how much a pickle may build."""

    standins: bool = (
        True  # False: refuse every global outside the allowlist (inputs that must be real)
    )
    allow_globals: frozenset[str] = frozenset()  # --allow-global: import and call these for real
    max_pickle_bytes: int = DEFAULT_MAX_PICKLE

    def __post_init__(self) -> None:
        check_allow_globals(self.allow_globals)


@dataclass
class Gate:
    """Unpickles the pickles of one file; remembers which globals it stood in for."""

    label: str
    policy: GatePolicy = field(default_factory=GatePolicy)
    registry: StandInRegistry = field(default_factory=StandInRegistry)
    warnings: list[str] = field(
        default_factory=list
    )  # what the user must hear even when the file opens

    @property
    def standins(self) -> list[str]:
        return self.registry.names

    @property
    def would_call(self) -> list[str]:
        """Stand-ins the pickle calls (REDUCE, NEWOBJ, INST, OBJ) that are not known data classes: torch.load
        would call each of them for real."""
        return [name for name in self.registry.called if not is_data_class(name)]

    def call_kind(self, module: str, name: str) -> int:
        """What calling this global does, for the structural pass's shadow stack (`shadow.CALL_*`)."""
        module, name = python3_name(module, name)
        if global_name(module, name) in self.policy.allow_globals:
            return CALL_REAL
        if (module, name) in SAFE_GLOBALS:
            return BUILTIN_CALLS.get((module, name), _SAFE_CALLS.get((module, name), CALL_VALUE))
        return CALL_STANDIN

    def _too_large(self, exc: PickleTooLargeError) -> CorruptFileError:
        return CorruptFileError(
            f"{self.label}'s pickle would build more than {format_size(exc.budget)} of objects (a pickle bomb, "
            f"or a very large checkpoint); pass --max-pickle-size {_suggest(max(exc.cost, exc.budget * 4))} to "
            "read it anyway"
        )

    def check_size(self, member: str, size: int) -> None:
        """Refuse a pickle whose inflated size alone exceeds the budget, before reading it."""
        if size > self.policy.max_pickle_bytes:
            raise CorruptFileError(
                f"{self.label}: {member} inflates to {format_size(size)}, more than --max-pickle-size "
                f"({format_size(self.policy.max_pickle_bytes)}) allows; pass --max-pickle-size "
                f"{_suggest(size)} to read it anyway"
            )

    def load(
        self,
        data: bytes | Any,
        start: int = 0,
        loader: Callable[[tuple[object, ...]], object] | None = None,
    ) -> tuple[Any, int]:
        """The object of the pickle at data[start:] and the offset past its end.

        `data` is bytes or an mmap. Every failure is a ModinspectError naming the file.
        """
        try:
            end, cost = measure_pickle(data, start, self.policy.max_pickle_bytes, self.call_kind)
        except PickleTooLargeError as exc:
            raise self._too_large(exc) from None
        except CorruptFileError as exc:
            raise CorruptFileError(f"{self.label} {exc}") from None
        chunk = (
            data if start == 0 and end == len(data) and isinstance(data, bytes) else data[start:end]
        )
        unpickler = RestrictedUnpickler(io.BytesIO(chunk), loader or _no_storage, self)
        unpickler.copy_budget = CopyBudget(cost, self.policy.max_pickle_bytes)
        try:
            obj = unpickler.load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(self.label, exc.globals) from None
        except PickleTooLargeError as exc:
            raise self._too_large(exc) from None
        except UsageError:
            raise
        except CorruptFileError as exc:
            if unpickler.refusals():
                raise UnsafePickleError(self.label, unpickler.refusals()) from None
            raise CorruptFileError(
                f"{self.label} is not a valid torch checkpoint: it {exc}"
            ) from None
        except Exception as exc:  # whatever a hostile pickle provokes, it is the file's fault
            if unpickler.refusals():
                raise UnsafePickleError(self.label, unpickler.refusals()) from None
            extension = extension_code(exc)
            if extension is not None:
                raise UnsafePickleError(self.label, [f"<copyreg extension {extension}>"]) from None
            raise CorruptFileError(
                f"{self.label} is not a valid torch checkpoint ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        if unpickler.refusals():
            raise UnsafePickleError(self.label, unpickler.refusals())
        return obj, end


def _suggest(size: int) -> str:
    gib = size / (1 << 30)
    return f"{max(1, int(gib) + 1)}G" if gib >= 1 else f"{max(1, int(size / (1 << 20)) + 1)}M"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def extension_code(exc: BaseException) -> int | None:
    text = str(exc)
    if isinstance(exc, ValueError) and text.startswith("unregistered extension code "):
        tail = text.removeprefix("unregistered extension code ").strip()
        return int(tail) if tail.isdigit() else None
    return None


def _no_storage(pid: tuple[object, ...]) -> StorageRef:
    raise CorruptFileError("refers to tensor storage outside the pickle")


class RestrictedUnpickler(pickle.Unpickler):
    """Calls only the allowlist; other globals become stand-ins, code-execution ones are recorded as refused."""

    def __init__(
        self,
        file: io.BytesIO,
        storage_loader: Callable[[tuple[object, ...]], object],
        gate: Gate | None = None,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._storage_loader = storage_loader
        self._gate = gate or Gate("<pickle>")
        self.refused: list[str] = []
        self.if_called: list[
            str
        ] = []  # torch code globals: refused when called, stand-ins when only named
        self.copy_budget = CopyBudget(0, self._gate.policy.max_pickle_bytes)

    def load(self) -> Any:
        with quiet_decoding():
            return super().load()

    def find_class(self, module: str, name: str) -> Any:
        module, name = python3_name(module, name)
        safe = SAFE_GLOBALS.get((module, name))
        if safe is not None:
            per_item = _COPY_COST.get((module, name))
            return safe if per_item is None else BoundedCall(safe, per_item, self.copy_budget)  # type: ignore[arg-type]
        dotted = global_name(module, name)
        policy = self._gate.policy
        if dotted in policy.allow_globals:
            real = _import_allowed(dotted)
            if not isinstance(real, type):
                warning = (
                    f"--allow-global {dotted} is a function, not a data class: the file calls it for real, "
                    "with arguments of its choosing"
                )
                if warning not in self._gate.warnings:
                    self._gate.warnings.append(warning)
            return real
        if dotted.startswith("torch.") and policy.standins and is_code_global(dotted):
            # torch's loaders and compilers, refused if the pickle calls them; a reference is data.
            self.if_called.append(dotted)
        elif (is_code_global(dotted) or not policy.standins) and dotted not in self.refused:
            # Read on, so the refusal can name every such global the file holds; nothing is called.
            self.refused.append(dotted)
        return self._gate.registry.cls(dotted)

    def refusals(self) -> list[str]:
        """The globals to refuse: by name, and torch's code globals that the pickle called."""
        called = self._gate.registry.called
        return [
            *self.refused,
            *(n for n in dict.fromkeys(self.if_called) if n in called and n not in self.refused),
        ]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CorruptFileError("refers to an unsupported persistent object")
        return self._storage_loader(pid)


def _import_allowed(dotted: str) -> Any:
    """The real object behind an --allow-global name: module attribute, or attribute path."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise UsageError(f"--allow-global {dotted}: no such importable object in this environment")


@contextlib.contextmanager
def quiet_decoding() -> Iterator[None]:
    """Text opcodes (STRING, GLOBAL) are escape-decoded, which warns about invalid escapes in the file.

    That is the file's problem, and reported as such when it matters; a warning would only escape
    as an exception where warnings are errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def storage_from_pid(pid: tuple[object, ...]) -> StorageRef:
    """('storage', type, key, location, numel[, view_metadata]) -> StorageRef."""
    if len(pid) < 5 or not isinstance(pid[1], StorageType) or type(pid[4]) is not int or pid[4] < 0:
        raise CorruptFileError("describes a storage it cannot name")
    return StorageRef(key=str(pid[2]), dtype=pid[1].dtype, location=str(pid[3]), numel=pid[4])


UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    TypeError,
    AttributeError,
    ValueError,
    IndexError,
    KeyError,
    RecursionError,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
)
