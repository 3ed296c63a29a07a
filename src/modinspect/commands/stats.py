"""`stats` as a library call: the model opened, the device and the inputs resolved, the run's policy applied.

`modinspect stats` is a thin shell over this: `prepare_stats(request)` opens everything (a user error is a
ModinspectError before anything runs) and `StatsRun.run()` returns the StatsReport; `run_stats` does both.

Under `torchrun` (WORLD_SIZE > 1 in the environment) each rank joins the process group (gloo on the CPU,
NCCL on CUDA, `cuda:LOCAL_RANK`), takes its equal slice of every batch along the first dimension, and the
ranks' statistics are merged exactly (modinspect.run.ranks): every rank returns the same report, which
only rank 0 needs to print.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.errors import UsageError
from modinspect.reports import StatsReport, short_repr
from modinspect.run.ranks import Ranks

if TYPE_CHECKING:
    from torch import nn

DTYPES = ("float32", "bfloat16", "float16")

__all__ = ["StatsRequest", "StatsRun", "prepare_stats", "run_stats"]


@dataclass(frozen=True)
class StatsRequest:
    """What `modinspect stats` is asked to do; every field has the CLI's default."""

    # a SOURCE (entry point, HF directory, ...), a live nn.Module, or None: [tool.modinspect]
    source: str | Path | nn.Module | None = None
    weights: str | None = None  # a checkpoint to load into the model first
    strict: bool = True
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None  # a Hugging Face config.json's layers built at most (default 512)
    input_file: Path | None = None  # a .pt / .safetensors batch
    input_shapes: tuple[tuple[int, ...], ...] = ()  # random positional inputs
    input_dtype: str | None = (
        None  # default: int64 when the model has an nn.Embedding, else float32
    )
    batches: int = 1
    seed: int = 0
    device: str = "auto"  # cpu, cuda, cuda:N, mps, auto
    dtype: str | None = (
        None  # bfloat16 / float16: under autocast; None: [tool.modinspect] dtype, else float32
    )
    train: bool = False
    backward: bool = True
    loss: str | Callable[[Any], Any] = (
        "auto"  # auto, sum, mean, file.py:FN, or a function of the output
    )
    pattern: str | None = None  # hook only modules matching this glob


@dataclass
class StatsRun:
    """A prepared run: the model, where it runs, its batches. `run()` once."""

    label: str
    module: nn.Module = field(repr=False)
    device: str
    options: Any  # StatsOptions
    batches: Iterable[Any] = field(repr=False)
    count: int  # number of batches
    described: str  # where the inputs came from
    ranks: Ranks = field(repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)
    # globals the model's pickles call (torch.load would)
    would_call: list[str] = field(default_factory=list, repr=False)
    _in_use: contextlib.AbstractContextManager[Any] = field(
        default_factory=contextlib.nullcontext, repr=False
    )
    _owns_group: bool = field(default=False, repr=False)

    __repr__ = short_repr

    def run(self, progress: Callable[[int], None] | None = None) -> StatsReport:
        from modinspect.run.inputs import to_device
        from modinspect.run.stats import collect_stats

        moved = (
            to_device(b, self.device, requires_grad=self.options.backward) for b in self.batches
        )
        try:
            with self._in_use, on_device(self.module, self.device):
                report = collect_stats(
                    self.module,
                    moved,
                    options=self.options,
                    source=self.label,
                    device=self.device,
                    inputs=self.described,
                    progress=progress,
                )
            return replace(report, would_call=tuple(self.would_call))
        finally:
            if self._owns_group:
                import torch

                torch.distributed.destroy_process_group()


def run_stats(
    request: StatsRequest,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> StatsReport:
    """Open, prepare and run in one call; the report never prints."""
    return prepare_stats(request, announce).run(progress)


def prepare_stats(request: StatsRequest, announce: Callable[[str], None] | None = None) -> StatsRun:
    """Open the model and resolve device, inputs and options; raises ModinspectError on a user error."""
    from modinspect.run.inputs import InputSpec, resolve_batches
    from modinspect.run.source import open_source
    from modinspect.run.stats import StatsOptions, seed_all
    from modinspect.sources.module import ModuleSource

    if request.dtype is not None and request.dtype not in DTYPES:
        raise UsageError(f"--dtype {request.dtype!r} is not float32, bfloat16 or float16")
    loss = loss_option(request.loss)
    extra = project_defaults(request.source)
    dtype = request.dtype or config_dtype(extra)
    seed_all(request.seed)  # before the model is built: its initial weights depend on it
    src = open_source(
        request.source,
        weights=request.weights,
        unsafe_pickle=request.unsafe_pickle,
        strict=request.strict,
        announce=announce,
        model_weights="init" if request.weights else "pretrained",
        allow_globals=request.allow_globals,
        max_pickle_size=request.max_pickle_size,
        max_layers=request.max_layers,
    )
    if src.module is None and src.format == "torchscript":
        # Even torch.jit.load's ScriptModule would not do: hooks need the Python model.
        raise UsageError(
            f"{src.label} is TorchScript, whose modules take no Python hooks; run stats on the Python model "
            f"instead, e.g. an entry point with --weights {src.label}"
        )
    if src.module is None:
        raise UsageError(
            f"{src.label} is a checkpoint without a model; stats needs one: pair it with an entry point, "
            f"e.g. modinspect stats models.py:build --weights {src.label}"
        )
    device = resolve_device(
        str(extra.get("device", request.device)) if request.device == "auto" else request.device
    )
    ranks, device, owns = join_ranks(device)
    resolved_dtype = request.input_dtype or default_input_dtype(src.module)
    spec = InputSpec(
        file=request.input_file,
        shapes=request.input_shapes,
        dtype=resolved_dtype,
        batches=request.batches,
        seed=request.seed,
    )
    if request.input_dtype is None and "input_dtype" not in extra:
        extra = {**extra, "input_dtype": resolved_dtype}
    if request.input_file is not None and request.weights is None:
        from modinspect.watching.sentinel import load_saved_weights

        said = load_saved_weights(src.module, Path(request.input_file))
        if said is not None and announce is not None:
            announce(said)
    raw, described = resolve_batches(src.module, spec, extra)
    batches: Iterable[Any] = raw
    if ranks.many:
        batches = (shard(b, ranks) for b in raw)
        described += f"; rank {ranks.rank} of {ranks.world} takes 1/{ranks.world} of each batch"
    options = StatsOptions(
        backward=request.backward,
        pattern=request.pattern,
        loss=loss,
        autocast_dtype=None if dtype == "float32" else dtype,
        train=request.train,
    )
    in_use = src.in_use() if isinstance(src, ModuleSource) else contextlib.nullcontext()
    return StatsRun(
        label=src.label,
        module=src.module,
        device=device,
        options=options,
        batches=batches,
        count=request.batches,
        described=described,
        ranks=ranks,
        warnings=list(src.warnings),
        would_call=list(src.would_call),
        _in_use=in_use,
        _owns_group=owns,
    )


def join_ranks(device: str) -> tuple[Ranks, str, bool]:
    """Under torchrun, join the process group (unless the caller has) and take this rank's GPU.

    Returns the ranks, the device (`cuda` becomes `cuda:LOCAL_RANK`), and whether the group is ours to close.
    """
    import modinspect.run.ranks as distributed

    ranks = distributed.ranks()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    owns = False
    if not ranks.many and world > 1 and "RANK" in os.environ:
        import torch

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
        ranks, owns = distributed.ranks(), True
    if ranks.many and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return ranks, device, owns


def shard(batch: Any, ranks: Ranks) -> Any:
    """This rank's equal slice, along the first dimension, of every tensor of the batch."""
    from modinspect.run.inputs import map_tensors

    def take(t: Any) -> Any:
        if t.dim() == 0:
            return t
        if t.shape[0] % ranks.world:
            raise UsageError(
                f"under torchrun each of the {ranks.world} ranks takes an equal slice of the batch: "
                f"a batch of {t.shape[0]} does not split in {ranks.world}"
            )
        size = t.shape[0] // ranks.world
        return t[ranks.rank * size : (ranks.rank + 1) * size]

    return map_tensors(batch, take)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: no CUDA device is available to this torch (a CPU build, or no GPU)"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: the MPS backend is not available on this machine")
    return device


def project_defaults(source: Any) -> dict[str, object]:
    """[tool.modinspect] input settings apply when the model itself comes from there."""
    if source is not None:
        return {}
    from modinspect.config import load_config

    config = load_config()
    extra = dict(config.extra)
    if "input" in extra:
        extra["input"] = str(config.root / str(extra["input"]))
    return extra


def config_dtype(extra: dict[str, object]) -> str:
    """[tool.modinspect] dtype, checked as --dtype is; float32 when the table has none."""
    dtype = extra.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UsageError(f"[tool.modinspect] dtype = {dtype!r} is not float32, bfloat16 or float16")
    return str(dtype)


def default_input_dtype(model: nn.Module) -> str:
    from modinspect.run.inputs import first_embedding_size

    return "int64" if first_embedding_size(model) is not None else "float32"


def loss_option(loss: str | Callable[[Any], Any]) -> str | Callable[[Any], Any]:
    if callable(loss) or loss in ("auto", "sum", "mean"):
        return loss
    from modinspect.sources.entrypoint import looks_like_entry_point, resolve_entry_point

    if not looks_like_entry_point(loss):
        raise UsageError(f"--loss {loss!r} is not auto, sum, mean or file.py:FUNCTION")
    fn = resolve_entry_point(loss)
    if not callable(fn):
        raise UsageError(f"--loss {loss} is not a function")
    return fn  # type: ignore[no-any-return]


@contextlib.contextmanager
def on_device(model: nn.Module, device: str) -> Iterator[None]:
    """Move the model to `device` for the run and back afterwards."""
    params = list(model.parameters())
    if any(p.device.type == "meta" for p in params):
        raise UsageError("stats needs real weights: the model is on the meta device (drop --meta)")
    original = params[0].device if params else None
    if original is None or str(original) == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(original)
