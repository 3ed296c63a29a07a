"""What the weights-only gate builds instead of torch objects: sealed references to tensors, storages and
dtypes, and the budgeted copying builtins. Data only; the stand-ins and the gate both read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modinspect.errors import CorruptFileError
from modinspect.sources.pickle.check import PickleTooLargeError


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
    # Quantized tensors: ('per_tensor_affine', scale, zero_point) or
    # ('per_channel_affine', scales TensorRef, zero_points TensorRef, axis).
    quantizer: tuple[object, ...] | None = None


@dataclass(frozen=True)
class SparseRef(_Sealed):
    """A sparse tensor: its layout, its dense shape and the dense tensors that store it."""

    layout: str  # 'sparse_coo', 'sparse_csr', ...
    components: tuple[
        TensorRef, ...
    ]  # COO: indices, values; compressed: compressed, plain indices, values
    shape: tuple[int, ...]
    requires_grad: bool = False

    @property
    def dtype(self) -> str:
        return self.components[-1].dtype


@dataclass(frozen=True)
class SubclassRef(_Sealed):
    """A tensor subclass (torchao's quantized weights) as the pickle describes it, never constructed: the
    class's dotted name, the shape and dtype of the float tensor it stands for, the plain tensors it holds
    (`qdata`, `scale`, `zero_point`, ... by attribute name, a nested subclass's as `outer.inner`), its
    `block_size` when it records one, whether it quantizes activations too (`act_quant_kwargs` or
    `activation_quantization` set) and its `target_dtype` when it records one."""

    cls: str
    shape: tuple[int, ...]
    dtype: str
    parts: tuple[tuple[str, TensorRef], ...] = ()
    block_size: tuple[int, ...] | None = None
    activation: bool = False
    requires_grad: bool = False
    target_dtype: str | None = (
        None  # the values' own dtype when qdata widens them (int4 kept in int8)
    )


@dataclass(frozen=True)
class QSchemeRef(_Sealed):
    name: str


@dataclass(frozen=True)
class LayoutRef(_Sealed):
    name: str


_CHAR_COST = 80  # a 1-character string beyond Latin-1 (sys.getsizeof('中') is 76)
_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset)


class CopyBudget:
    """What the allowlist's copying builtins may still allocate in one unpickling: --max-pickle-size less what
    the structural pass counted for the opcodes themselves."""

    def __init__(self, spent: int, budget: int) -> None:
        self.spent = spent
        self.budget = budget

    def charge(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.budget:
            raise PickleTooLargeError(self.spent, self.budget)


class BoundedCall(_Sealed):
    """An allowlisted builtin that copies its argument (list, set, dict, ...): charged before it runs.

    `builtins.list('a' * 127_000_000)` is 127 MB of pickle and a gigabyte of list; `list(x)` of a
    memoized 1M-item list, called 1,000 times, is 8 GB from a few KB more. The charge is per item of the
    argument: a string of characters beyond ASCII also costs a new 1-character string per item.
    """

    __slots__ = ("_budget", "_fn", "_per_item", "name")

    def __init__(self, fn: Callable[..., object], per_item: int, budget: CopyBudget) -> None:
        self.name = getattr(
            fn, "__name__", "?"
        )  # what a stand-in given it shows: defaultdict(list)
        self._fn, self._per_item, self._budget = fn, per_item, budget

    def __call__(self, *args: object) -> object:
        if args:
            value = args[0]
            items = len(value) if isinstance(value, _SIZED) else 0
            if items:  # anything unsized: the builtin refuses it
                per_item = self._per_item
                if type(value) is str and per_item > 1 and not value.isascii():
                    per_item += _CHAR_COST
                self._budget.charge(items * per_item)
        return self._fn(*args)


# Bytes per item of the argument, measured with tracemalloc on 10^6 items (list 8, set 50, dict 63,
# OrderedDict 94); _codecs.encode makes one byte per character.
_COPY_COST: dict[tuple[str, str], int] = {
    ("builtins", "list"): 8,
    ("builtins", "tuple"): 8,
    ("torch", "Size"): 8,
    ("builtins", "set"): 64,
    ("builtins", "frozenset"): 64,
    ("builtins", "dict"): 64,
    ("collections", "OrderedDict"): 104,
    ("_codecs", "encode"): 1,
}
