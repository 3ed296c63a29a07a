"""Inputs for `stats`: a file, random tensors of given shapes, or the model's example_input_array."""

from __future__ import annotations

import mmap
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, SourceNotFoundError, UsageError
from modinspect.sources.pickle.gate import Gate, GatePolicy, storage_from_pid
from modinspect.sources.sniff import sniff
from modinspect.tensors import map_tensors as map_nested

if TYPE_CHECKING:
    from torch import nn

    pass

Batch = tuple[tuple[Any, ...], dict[str, Any]]
INT_DTYPES = {"int64", "int32", "int16", "int8", "uint8", "long", "int"}
FLOAT_DTYPES = dtypes.COMPUTE_FLOATS


@dataclass(frozen=True)
class InputSpec:
    """How to make each batch. Exactly one of file / shapes / example is used, in that order.

    Attributes:
        file: a .pt or .safetensors batch (the CLI's `--input`).
        shapes: shapes of random positional inputs (`--input-shape`).
        dtype: the random inputs' dtype ("" in `add_layers`: int64 below the vocabulary when the model has
            an nn.Embedding, else the stored weights' float dtype).
        batches: how many batches are made.
        seed: the random inputs' seed.
    """

    file: Path | None = None
    shapes: tuple[tuple[int, ...], ...] = ()
    dtype: str = "float32"
    batches: int = 1
    seed: int = 0


def parse_shape(text: str) -> tuple[int, ...]:
    """'2,16' or '2x16' -> (2, 16)."""
    parts = [p.strip() for p in re.split(r"[,x×]", text)]
    if not all(p.isdigit() for p in parts):
        raise UsageError(f"--input-shape {text!r} is not a list of integers like 2,16")
    shape = tuple(int(p) for p in parts)
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r} needs positive sizes, like 2,16")
    return shape


def _as_batch(obj: Any, label: str) -> Batch:
    import torch

    if isinstance(obj, torch.Tensor):
        return (obj,), {}
    if isinstance(obj, list | tuple):
        return tuple(obj), {}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise UsageError(
                f"{label}: a dict of inputs needs string keys (they become keyword arguments)"
            )
        return (), dict(obj)
    raise UsageError(
        f"{label} holds a {type(obj).__name__}; expected a tensor, a tuple/list or a dict of tensors"
    )


def load_input_file(path: Path, label: str) -> Batch:
    """A .safetensors file (a dict of tensors -> keyword arguments) or a .pt loaded weights-only."""
    if not path.is_file():
        raise SourceNotFoundError(f"input file {label} does not exist")
    kind = sniff(path)
    import torch

    if kind == "safetensors":
        from modinspect.sources.safetensors import SafetensorsSource

        with SafetensorsSource(path, label) as src:
            tensors = src.state_dict()
        if list(tensors) == ["input"] or list(tensors) == ["x"]:
            return (next(iter(tensors.values())),), {}
        return (), tensors
    if kind == "zip":
        _gate_zip(path, label)
    elif kind == "pickle":
        # A legacy torch file is five pickles in a row (magic, protocol, system info, the object,
        # the storage keys) and torch.load unpickles them all: gate every one, not just the first.
        _gate_pickles(path, label, 5)
    else:
        raise CorruptFileError(f"input file {label} is neither safetensors nor a torch .pt file")
    try:
        with (
            warnings.catch_warnings()
        ):  # torch's own warnings about the file would be a second stderr line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptFileError(
            f"input file {label} could not be loaded ({type(exc).__name__}: {first})"
        ) from exc
    batch = _as_batch(obj, f"input file {label}")
    check_input_sizes(batch, label)
    return batch


# An input tensor whose logical size is this many times its storage is a stride-0 view built to
# make `stats` sum 2^40 elements; a real batch is never broadcast that far.
MAX_INPUT_EXPANSION = 4096
MAX_INPUT_EXPANDED = 1 << 24


def check_input_sizes(batch: Batch, label: str) -> None:
    """Refuse input tensors whose logical size is absurd for the storage behind them."""
    import torch

    args, kwargs = batch
    for where, value in [*((f"input {i}", a) for i, a in enumerate(args)), *kwargs.items()]:
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            continue
        stored = value.untyped_storage().nbytes() // max(value.element_size(), 1)
        if value.numel() > MAX_INPUT_EXPANDED and value.numel() > MAX_INPUT_EXPANSION * max(
            stored, 1
        ):
            raise CorruptFileError(
                f"input file {label}: {where} claims {value.numel():,} elements over a storage of {stored:,} (a "
                "stride-0 view); save the batch with .contiguous()"
            )


def _gate(label: str) -> Gate:
    # Inputs must be real tensors: a global outside the allowlist is refused, not stood in for.
    return Gate(label, GatePolicy(standins=False))


def _gate_zip(path: Path, label: str) -> None:
    from modinspect.sources.torchfile import ZIP_ERRORS, read_pickle_member

    gate = _gate(label)
    try:
        with zipfile.ZipFile(path) as zf:
            name = next(
                (n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None
            )
            if name is None:
                raise CorruptFileError(f"input file {label} is a zip file without data.pkl")
            data = read_pickle_member(zf, name, path.stat().st_size, path, gate)
    except ZIP_ERRORS as exc:
        raise CorruptFileError(f"input file {label} is a damaged zip file ({exc})") from None
    assert data is not None
    gate.load(data, 0, storage_from_pid)


def _gate_pickles(path: Path, label: str, count: int) -> None:
    """Gate up to `count` pickles stored one after another (fewer when the file ends)."""
    from modinspect.sources.torchfile import map_file

    gate = _gate(label)
    data = map_file(path)
    try:
        pos = 0
        for _ in range(count):
            _, pos = gate.load(data, pos, storage_from_pid)
            if pos >= len(data):
                break
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def first_embedding_size(model: nn.Module) -> int | None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            return int(m.num_embeddings)
    return None


def example_batch(model: nn.Module) -> Batch | None:
    """The Lightning convention: `model.example_input_array`."""
    example = getattr(model, "example_input_array", None)
    return None if example is None else _as_batch(example, "example_input_array")


def random_batches(
    model: nn.Module, shapes: Sequence[tuple[int, ...]], dtype: str, count: int, seed: int
) -> Iterator[Batch]:
    """`count` batches of random tensors; integers are drawn below the first nn.Embedding's vocabulary."""
    import torch

    if dtype not in INT_DTYPES | FLOAT_DTYPES:
        raise UsageError(
            f"--input-dtype {dtype!r} is not one of {', '.join(sorted(INT_DTYPES | FLOAT_DTYPES))}"
        )
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    high = first_embedding_size(model) or 2
    for _ in range(count):
        tensors = []
        for shape in shapes:
            if dtype in INT_DTYPES:
                tensors.append(
                    torch.randint(0, high, shape, generator=generator, dtype=torch_dtype)
                )
            else:
                tensors.append(torch.randn(shape, generator=generator).to(torch_dtype))
        yield tuple(tensors), {}


def map_tensors(batch: Batch, fn: Callable[[Any], Any]) -> Batch:
    """The batch with `fn` applied to every tensor in it, through nested containers (`tensors.map_tensors`)."""
    args, kwargs = batch
    return tuple(map_nested(a, fn) for a in args), {k: map_nested(v, fn) for k, v in kwargs.items()}


def to_device(batch: Batch, device: str, requires_grad: bool) -> Batch:
    """Move every tensor to `device`; floating inputs require grad so the first modules' input gradients exist."""

    def move(obj: Any) -> Any:
        t = obj.detach().to(device)
        if requires_grad and t.is_floating_point():
            t.requires_grad_(True)
        return t

    return map_tensors(batch, move)


def describe_batch(batch: Batch) -> str:
    """'(2, 16) int64' style summary of the first batch's tensors."""
    import torch

    def one(t: Any) -> str:
        return (
            f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            if isinstance(t, torch.Tensor)
            else type(t).__name__
        )

    args, kwargs = batch
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) or "no inputs"


def resolve_batches(
    model: nn.Module,
    spec: InputSpec,
    config_extra: dict[str, Any] | None = None,
) -> tuple[list[Batch] | Iterator[Batch], str]:
    """The batches to run and a one-line description of where they came from."""
    extra = config_extra or {}
    if spec.file is not None:
        batch = load_input_file(spec.file, str(spec.file))
        return [batch] * spec.batches, f"{spec.file}: {describe_batch(batch)}"
    shapes = spec.shapes
    dtype = spec.dtype
    if not shapes and "input_shape" in extra:
        raw = extra["input_shape"]
        raw_list = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else raw
        shapes = tuple(
            parse_shape(s) if isinstance(s, str) else tuple(int(d) for d in s) for s in raw_list
        )
        dtype = str(extra.get("input_dtype", dtype))
    if shapes:
        batches = list(random_batches(model, shapes, dtype, spec.batches, spec.seed))
        return (
            batches,
            f"random {describe_batch(batches[0])} × {spec.batches} batch(es), seed {spec.seed}",
        )
    example = example_batch(model)
    if example is not None:
        return [example] * spec.batches, f"example_input_array: {describe_batch(example)}"
    if "input" in extra:
        batch = load_input_file(Path(str(extra["input"])), str(extra["input"]))
        return [batch] * spec.batches, f"{extra['input']}: {describe_batch(batch)}"
    raise UsageError(
        "stats needs an input: pass --input FILE or --input-shape 2,16 (repeatable), set example_input_array "
        "on the model, or add input_shape to [tool.modinspect]"
    )
