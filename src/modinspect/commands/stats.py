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
    """What `modinspect stats` is asked to do; every field has the CLI's default.

    Attributes:
        source: a SOURCE (an entry point, a Hugging Face directory, ...), a live nn.Module, or None for the
            [tool.modinspect] default.
        weights: a checkpoint to load into the model first (`--weights`).
        strict: with `weights`, fail on a key that does not match instead of loading what fits.
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (None: 256 MiB).
        max_layers: a Hugging Face config.json's layers built at most (None: 512).
        input_file: a .pt / .safetensors batch (`--input`).
        input_shapes: shapes of random positional inputs (`--input-shape`).
        input_dtype: the random inputs' dtype; None: int64 when the model has an nn.Embedding, else float32.
        batches: how many batches are run.
        seed: the seed of the random inputs (and of torch's generators).
        device: cpu, cuda, cuda:N, mps, or auto.
        dtype: bfloat16 / float16 to run under autocast; None: [tool.modinspect]'s dtype, else float32.
        train: run in training mode (dropout, batch statistics); None: eval mode, or, with an `input_file`
            saved by `watch(save_batch=...)`, the mode that step ran in.
        backward: run a backward too, for the gradient statistics.
        loss: what the backward starts from: auto, sum, mean, `file.py:FN`, or a function of the output.
        pattern: hook only the modules whose name matches this glob.
    """

    source: str | Path | nn.Module | None = None
    weights: str | None = None
    strict: bool = True
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None
    input_file: Path | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtype: str | None = None
    batches: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str | None = None
    train: bool | None = None
    backward: bool = True
    loss: str | Callable[[Any], Any] = "auto"
    pattern: str | None = None


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
        """Run the prepared batches once; `progress(1)` is called after each. Returns the StatsReport."""
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
    """Open, prepare and run in one call: what `modinspect stats` runs; the report never prints.

    Args:
        request: a StatsRequest (every field has the CLI's default).
        announce: hears notes (an entry point about to be imported from [tool.modinspect]).
        progress: called with 1 after each batch.

    Returns:
        A StatsReport: per-module statistics in call order, the first NaN/Inf's origin, diagnoses.

    Raises:
        ModinspectError: a user error (a bad option, a SOURCE without a model, a forward that raises).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> request = modinspect.StatsRequest(source=model, input_shapes=((16, 4),), device="cpu")
        >>> report = modinspect.run_stats(request)
        >>> report.loss, [(m.name, m.count) for m in report.modules]
        ('sum', [('', 32), ('0', 128), ('1', 128), ('2', 32)])
    """
    return prepare_stats(request, announce).run(progress)


def prepare_stats(request: StatsRequest, announce: Callable[[str], None] | None = None) -> StatsRun:
    """Open the model and resolve device, inputs and options, without running anything.

    The CLI reports the sources' warnings between this and `StatsRun.run()`.

    Args:
        request: a StatsRequest (every field has the CLI's default).
        announce: hears notes (an entry point about to be imported from [tool.modinspect]).

    Returns:
        A StatsRun: the model, its device, its batches and warnings; `run()` it once.

    Raises:
        ModinspectError: a user error, before anything runs.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> run = modinspect.prepare_stats(modinspect.StatsRequest(source=model, input_shapes=((16, 4),)))
        >>> run.count, run.described, run.warnings
        (1, 'random (16, 4) float32 × 1 batch(es), seed 0', [])
        >>> run.run().modules[1].count
        128
    """
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
    train = request.train
    if request.input_file is not None and request.weights is None:
        from modinspect.watching.sentinel import load_saved_weights

        saved = load_saved_weights(src.module, Path(request.input_file))
        if saved is not None:
            said, saved_training = saved
            if train is None and saved_training:
                train = True  # the step ran in training mode: its dropout masks come from the saved RNG state
                said += "; in training mode, as that step ran"
            if announce is not None:
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
        train=bool(train),
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
