"""The Typer app. Each command parses its options, calls one command (modinspect.commands), prints its report, sets the exit code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from modinspect.cli import output
from modinspect.errors import UsageError
from modinspect.version import __version__

if TYPE_CHECKING:
    from modinspect.reports import RunReport
    from modinspect.reports.compare import RunComparison


class _OneLineErrors(TyperGroup):
    """The command line's own mistakes (an unknown option, a missing argument, a value of the wrong type) as
    one plain line on stderr and exit code 2, like every other user error, instead of click's boxed usage."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **kwargs: Any,
    ) -> Any:
        import importlib
        import sys

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        # Recent Typer releases vendor click as typer._click; older ones use click itself.
        try:
            ex: Any = importlib.import_module("typer._click.exceptions")
        except ImportError:
            ex = importlib.import_module("click.exceptions")
        no_args = getattr(ex, "NoArgsIsHelpError", ())
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        except no_args as exc:  # `modinspect` alone: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except ex.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "modinspect"
            message = " ".join(exc.format_message().split())
            raise output.fail(f"{message} (see `{path} -h`)", SystemExit) from None
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        except ex.ClickException as exc:
            output.fail(" ".join(exc.format_message().split()), SystemExit)
            sys.exit(exc.exit_code)
        # Non-standalone click returns the command's value, or the code of the Exit that ended it.
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="modinspect",
    help="Look inside PyTorch models and checkpoints, without their code and without running their pickles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

SourceArg = Annotated[
    str | None,
    typer.Argument(
        help="A checkpoint (.safetensors, sharded dir or index, .pt/.pth/.bin/.ckpt, TorchScript, Hugging Face dir "
        "with config.json, torch.distributed.checkpoint dir, PEFT adapter dir, torch.export .pt2) or an entry "
        "point path/file.py:NAME or package.module:NAME. Default: the \\[tool.modinspect] table of the nearest pyproject.toml.",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint to load into the model SOURCE builds.",
        metavar="CHECKPOINT",
    ),
]
MetaOpt = Annotated[
    bool,
    typer.Option("--meta", help="Build an entry point's model on the meta device (no memory)."),
]
UnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--unsafe-pickle",
        help="Allow full unpickling: runs code from the file. Only for files you trust.",
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict/--no-strict", help="--weights must match every key.")
]
AllowGlobalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        help="Import and build this pickled global for real instead of an inert stand-in "
        "(repeatable; runs its code). Only for names you trust.",
        metavar="MODULE.NAME",
    ),
]
MaxPickleOpt = Annotated[
    str | None,
    typer.Option(
        "--max-pickle-size",
        help="Largest pickle to read, counted by the memory its objects would take "
        "(e.g. 1G) \\[default: 256M].",
        metavar="SIZE",
    ),
]
MaxLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--max-layers",
        min=1,
        help="Most layers a Hugging Face config.json may ask for before its model is "
        "built (a config of 100,000 layers takes minutes) \\[default: 512].",
        metavar="N",
    ),
]
# The random example input of stats and doctor (both built by commands/stats.py's input machinery).
RandomInputShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        "-s",
        help="Shape of a random positional input, e.g. 2,16 (repeat for several inputs).",
        metavar="SHAPE",
    ),
]
RandomInputDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-dtype",
        help="dtype of --input-shape tensors \\[default: int64 when the "
        "model has an nn.Embedding (ids drawn below its vocabulary), else float32]",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a JSON document instead of the rich view.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
HFNamesOpt = Annotated[
    bool,
    typer.Option(
        "--hf-names",
        help="Show a GGUF file's tensors under the Hugging Face names of the checkpoint it was "
        "converted from (llama, mixtral, qwen2, gemma, phi3, gpt2).",
    ),
]
WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Show every table column with every digit, names whole, "
        "however long the lines get (for a wide terminal or less -S).",
    ),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Show only these table columns, comma-separated, by title or key (e.g. mean,std,grad_norm); "
        "an unknown one is an error that lists them.",
        metavar="COLS",
    ),
]


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """ModinspectError -> one line on stderr and exit 2; anything else is a bug, shown in full under --debug."""
    with output.user_errors(debug or _state["debug"], typer.Exit, passthrough=(typer.Exit,)):
        yield


def _version(value: bool) -> None:
    if value:
        print(f"modinspect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    _state["debug"] = debug


@app.command()
def tree(
    source: SourceArg = None,
    weights: WeightsOpt = None,
    meta: MetaOpt = False,
    unsafe_pickle: UnsafeOpt = False,
    allow_global: AllowGlobalOpt = None,
    max_pickle_size: MaxPickleOpt = None,
    max_layers: MaxLayersOpt = None,
    strict: StrictOpt = True,
    depth: Annotated[
        int | None, typer.Option("--depth", "-d", min=0, help="Show at most N levels.")
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--filter", "-f", help="Show only modules/tensors matching GLOB.", metavar="GLOB"
        ),
    ] = None,
    expand: Annotated[
        bool, typer.Option("--expand", help="Do not collapse runs of identical blocks.")
    ] = False,
    shapes: Annotated[
        bool,
        typer.Option(
            "--shapes",
            help="Add output shapes, MACs and activation memory from one forward pass on "
            "the meta device, with the model's example_input_array or \\[tool.modinspect]'s input.",
        ),
    ] = False,
    input_shape: Annotated[
        list[str] | None,
        typer.Option(
            "--input-shape",
            "-s",
            help="Shape of a positional input for --shapes, e.g. "
            "1,3,224,224 (repeat for several inputs; implies --shapes).",
            metavar="SHAPE",
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="Input for --shapes from a .pt (weights-only) or .safetensors "
            "file (implies --shapes).",
            metavar="FILE",
        ),
    ] = None,
    input_dtype: Annotated[
        str | None,
        typer.Option(
            "--input-dtype",
            help="dtype of --input-shape tensors \\[default: int64 when the model "
            "has an nn.Embedding, else the weights' float dtype]",
        ),
    ] = None,
    hf_names: HFNamesOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the module tree with parameter counts, buffers, dtypes and bytes; tied weights counted once.

    Reads checkpoints without the model's code (a safetensors header, a torch pickle through the weights-only gate) or builds a model from an entry point. Runs of identical blocks collapse into one row (h.0 … h.11 ×12). Live modules show their hyperparameters as print(model) does. With --input-shape (or --input, or --shapes) each module also shows its output shape, MACs and activation memory, from one forward pass on the meta device: no memory, whatever the model's size.

    Examples:

        modinspect tree model.safetensors

        modinspect tree gpt2/ --depth 2

        modinspect tree models.py:build_model --weights ckpt.pt --filter 'encoder.*'

        modinspect tree ckpt.pth --json | jq .totals.params

        modinspect tree models.py:resnet18 --meta --input-shape 1,3,224,224
    """
    with user_errors(debug):
        from modinspect.commands.tree import TreeRequest, run_tree
        from modinspect.run.inputs import parse_shape

        request = TreeRequest(
            source=source,
            weights=weights,
            meta=meta,
            strict=strict,
            unsafe_pickle=unsafe_pickle,
            **output.gate_options(allow_global, max_pickle_size, max_layers),
            depth=depth,
            pattern=pattern,
            expand=expand,
            shapes=shapes,
            input_file=input_file,
            input_shapes=tuple(parse_shape(s) for s in input_shape or ()),
            input_dtype=input_dtype,
            hf_names=hf_names,
        )
        report = run_tree(request, announce=output.note, warn=output.warn, phase=output.spinner)
        output.emit(report, as_json)


PrefixOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--strip-prefix",
        help="Remove PREFIX from keys on both sides (repeatable).",
        metavar="PREFIX",
    ),
]
RenameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rename",
        help="Rewrite keys with a regex, 'REGEX=REPL' (repeatable).",
        metavar="REGEX=REPL",
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only keys matching GLOB (repeatable).", metavar="GLOB"),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Skip keys matching GLOB (repeatable).", metavar="GLOB"),
]


@app.command()
def diff(
    a: Annotated[
        str, typer.Argument(help="First SOURCE (any format, or an entry point with --weights-a).")
    ],
    b: Annotated[str, typer.Argument(help="Second SOURCE.")],
    weights_a: Annotated[
        str | None,
        typer.Option(
            "--weights-a",
            help="Checkpoint to load into A when A is an entry point.",
            metavar="CHECKPOINT",
        ),
    ] = None,
    weights_b: Annotated[
        str | None,
        typer.Option(
            "--weights-b",
            help="Checkpoint to load into B when B is an entry point.",
            metavar="CHECKPOINT",
        ),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option("--atol", min=0.0, help="Absolute tolerance \\[default: per dtype]."),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option("--rtol", min=0.0, help="Relative tolerance \\[default: per dtype]."),
    ] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Bitwise equality: no tolerance.")] = False,
    nan_unequal: Annotated[
        bool, typer.Option("--nan-unequal", help="Count NaN against NaN as a difference.")
    ] = False,
    strip_prefix: PrefixOpt = None,
    rename: RenameOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    unsafe_pickle: UnsafeOpt = False,
    allow_global: AllowGlobalOpt = None,
    max_pickle_size: MaxPickleOpt = None,
    max_layers: MaxLayersOpt = None,
    hf_names: HFNamesOpt = False,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compare two checkpoints tensor by tensor, streamed; exit 0 when they match, 1 when they differ, 2 on errors.

    Reports keys only in A or B, shape and dtype mismatches, and for tensors on both sides max |a−b|, mean |a−b|, relative L2 error, cosine similarity and the number of elements outside tolerance (torch.testing's per-dtype defaults unless --atol/--rtol/--exact). Tied names stored once on one side match through their partner. Memory stays flat: tensors are read in chunks. A quantized side (GGUF, GPTQ/AWQ, bitsandbytes, FP8, compressed-tensors, torch.ao) against a float one is dequantised chunk by chunk, and each tensor and module is ranked by relative error, cosine and SNR, with its scheme and bits per weight.

    Examples:

        modinspect diff before.safetensors after.safetensors

        modinspect diff ddp_ckpt.pt model.safetensors --strip-prefix module.

        modinspect diff model.safetensors model-Q4_K_M.gguf

        modinspect diff a.pth b.pth --exact --json | jq '.changed[0]'
    """
    code = 0
    with user_errors(debug):
        code = output.run_diff(
            output.DiffArgs(
                a=a,
                b=b,
                weights_a=weights_a,
                weights_b=weights_b,
                atol=atol,
                rtol=rtol,
                exact=exact,
                nan_unequal=nan_unequal,
                strip_prefix=tuple(strip_prefix or ()),
                rename=tuple(rename or ()),
                include=tuple(include or ()),
                exclude=tuple(exclude or ()),
                unsafe_pickle=unsafe_pickle,
                allow_global=tuple(allow_global or ()),
                max_pickle_size=max_pickle_size,
                max_layers=max_layers,
                hf_names=hf_names,
                as_json=as_json,
                wide=wide,
                columns=columns,
            )
        )
    raise typer.Exit(code)


@app.command()
def load(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="[MODEL] CHECKPOINT: MODEL builds a module (entry point, TorchScript; "
            "default: \\[tool.modinspect]); CHECKPOINT is any SOURCE with a state dict.",
            metavar="[MODEL] CHECKPOINT",
            show_default=False,
        ),
    ],
    strict: Annotated[
        bool, typer.Option("--strict", help="Every key must match, else exit 1 and write nothing.")
    ] = False,
    skip_mismatched: Annotated[
        bool,
        typer.Option(
            "--skip-mismatched", help="Leave tensors whose shape differs at the model's values."
        ),
    ] = False,
    strip_prefix: PrefixOpt = None,
    add_prefix: Annotated[
        str,
        typer.Option(
            "--add-prefix", help="Prepend PREFIX to every checkpoint key.", metavar="PREFIX"
        ),
    ] = "",
    rename: RenameOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; load and write nothing.")
    ] = False,
    meta: Annotated[
        bool,
        typer.Option(
            "--meta", help="Build the model on the meta device: a free plan (implies --dry-run)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the resulting state dict (.safetensors or .pt), atomically.",
            metavar="FILE",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    unsafe_pickle: UnsafeOpt = False,
    allow_global: AllowGlobalOpt = None,
    max_pickle_size: MaxPickleOpt = None,
    max_layers: MaxLayersOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Load what fits of a checkpoint into a model, and report every key: loaded, missing, unexpected, mismatched, cast.

    Exit 0 when the load was performed as asked, 1 when --strict failed (nothing written), 2 on errors.

    Examples:

        modinspect load models.py:resnet18 imagenet.pth --dry-run

        modinspect load models.py:classifier pretrained.pt --skip-mismatched --out init.safetensors

        modinspect load models.py:net ddp_ckpt.pt --strip-prefix module. --strict --json
    """
    code = 0
    with user_errors(debug):
        from modinspect.commands.load import LoadRequest, MismatchedShapesError, run_load
        from modinspect.names import KeyMap, parse_renames

        if len(paths) not in (1, 2):
            raise UsageError("load takes [MODEL] CHECKPOINT: one or two SOURCEs")
        model_spec, ckpt_spec = (None, paths[0]) if len(paths) == 1 else (paths[0], paths[1])
        if model_spec is None:
            _note_one_argument_load(ckpt_spec)
        keymap = KeyMap(
            strip_prefixes=tuple(strip_prefix or ()),
            add_prefix=add_prefix,
            renames=parse_renames(rename or ()),
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
        )
        gate = output.gate_options(allow_global, max_pickle_size, max_layers)
        request = LoadRequest(
            checkpoint=ckpt_spec,
            model=model_spec,
            keymap=keymap,
            strict=strict,
            skip_mismatched=skip_mismatched,
            dry_run=dry_run,
            meta=meta,
            out=out,
            force=force,
            unsafe_pickle=unsafe_pickle,
            **gate,
        )
        blocked: MismatchedShapesError | None = None
        try:
            with output.spinner("loading…"):
                report = run_load(request, announce=output.note, warn=output.warn)
        except MismatchedShapesError as exc:
            blocked, report = exc, exc.report
        output.emit(report, as_json)
        if blocked is not None:
            raise blocked
        code = 1 if report.strict_failed else 0
    raise typer.Exit(code)


def _note_one_argument_load(checkpoint: str) -> None:
    """With one argument, MODEL comes from [tool.modinspect]: say so, or say that load takes two."""
    from modinspect.config import load_config
    from modinspect.errors import ConfigError

    try:
        load_config()
    except ConfigError:
        raise UsageError(
            f"load takes MODEL CHECKPOINT; with only {checkpoint}, MODEL would come from [tool.modinspect], and "
            "there is none here: pass both, e.g. modinspect load models.py:build " + checkpoint
        ) from None
    output.note(
        f"load takes MODEL CHECKPOINT; {checkpoint} is the CHECKPOINT, MODEL comes from [tool.modinspect]"
    )


@app.command()
def stats(
    source: SourceArg = None,
    weights: WeightsOpt = None,
    unsafe_pickle: UnsafeOpt = False,
    allow_global: AllowGlobalOpt = None,
    max_pickle_size: MaxPickleOpt = None,
    max_layers: MaxLayersOpt = None,
    strict: StrictOpt = True,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="A .pt (weights-only) or .safetensors file with a tensor, "
            "a tuple/list, or a dict of tensors (keyword arguments).",
            metavar="FILE",
        ),
    ] = None,
    input_shape: RandomInputShapeOpt = None,
    input_dtype: RandomInputDtypeOpt = None,
    batches: Annotated[
        int,
        typer.Option(
            "--batches",
            "-b",
            min=1,
            help="Random batches to run; stats merge across them (a counter with an ETA on a terminal).",
        ),
    ] = 1,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for model construction, random inputs and dropout.")
    ] = 0,
    device: Annotated[
        str, typer.Option("--device", help="cpu, cuda, cuda:N, mps or auto.")
    ] = "auto",
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float32, or bfloat16/float16 to run under autocast "
            "[default: \\[tool.modinspect] dtype when the model comes from there, else float32]",
        ),
    ] = None,
    train: Annotated[
        bool | None,
        typer.Option(
            "--train/--eval",
            help="Run in training mode (dropout, BatchNorm batch stats) or eval mode \\[default: eval; with "
            "--input from watch(save_batch=...), the mode that step ran in].",
            show_default=False,
        ),
    ] = None,
    backward: Annotated[
        bool, typer.Option("--backward/--no-backward", help="Also run backward on the loss.")
    ] = True,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            help="auto (the model's own output.loss when it returns one, else sum), sum or "
            "mean of the floating outputs, or file.py:FN taking the output.",
        ),
    ] = "auto",
    pattern: Annotated[
        str | None,
        typer.Option("--filter", "-f", help="Hook only modules matching GLOB.", metavar="GLOB"),
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Also exit 1 on these findings, comma-separated: nan, dead, "
            "mostly-dead, exploding, vanishing (NaN/Inf always exits 1).",
            metavar="FINDINGS",
        ),
    ] = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the model with hooks on every module: activation stats, dead ReLUs, gradient norms, first NaN/Inf.

    A batch with a NaN/Inf is replayed exactly to name the aten op, the module and your source line that produced it (in backward: the autograd node and the forward line that created it).

    Statistics stay on the device and come back once per batch. The backward pass runs on the model's own loss when its output has one (a Hugging Face model given labels), else on the sum of the floating outputs (--loss sum/mean, or your own function). Exit code 0 when every value was finite, 1 when a NaN/Inf was found (or a --fail-on finding), 2 on errors.

    Examples:

        modinspect stats models.py:build --input-shape 8,3,32,32

        modinspect stats gpt2.py:model --input-shape 4,128 --device cuda --dtype bfloat16

        modinspect stats --input batch.pt --json      # model from [tool.modinspect]

        modinspect stats models.py:build -s 8,3,32,32 --fail-on dead,exploding   # for CI
    """
    code = 0
    with user_errors(debug):
        from modinspect.commands.stats import StatsRequest, prepare_stats
        from modinspect.run.inputs import parse_shape

        findings = _findings(fail_on)
        gate = output.gate_options(allow_global, max_pickle_size, max_layers)
        request = StatsRequest(
            source=source,
            weights=weights,
            strict=strict,
            unsafe_pickle=unsafe_pickle,
            allow_globals=gate["allow_globals"],
            max_pickle_size=gate["max_pickle_size"],
            max_layers=gate["max_layers"],
            input_file=input_file,
            input_shapes=tuple(parse_shape(s) for s in input_shape or ()),
            input_dtype=input_dtype,
            batches=batches,
            seed=seed,
            device=device,
            dtype=dtype,
            train=train,
            backward=backward,
            loss=loss,
            pattern=pattern,
        )
        layout = output.table_layout(wide, columns)
        if (
            layout is not None and layout.columns is not None
        ):  # an unknown column fails before the model runs
            from modinspect.render.console import STATS_COLUMNS, choose_columns

            choose_columns(list(STATS_COLUMNS), layout.columns)
        with output.spinner("building the model…"):
            run = prepare_stats(request, announce=output.note)
        writer = (
            run.ranks.writer
        )  # under torchrun, rank 0 prints; every rank exits with the same code
        if writer:
            output.warn(run.warnings)
        from modinspect.render.console import batch_progress

        counter = batch_progress(batches, run.device) if writer else contextlib.nullcontext(None)
        with counter as advance:
            report = run.run(progress=advance)
        if writer:
            output.emit(report, as_json, layout)
        code = 1 if report.nonfinite_found or any(report.has(f) for f in findings) else 0
    raise typer.Exit(code)


def _findings(option: str | None) -> list[str]:
    from modinspect.reports import STATS_FINDINGS

    chosen = [f.strip() for f in (option or "").split(",") if f.strip()]
    for f in chosen:
        if f not in STATS_FINDINGS:
            raise UsageError(f"--fail-on {f!r} is not one of {', '.join(STATS_FINDINGS)}")
    return chosen


@app.command()
def report(
    logs: Annotated[
        list[Path],
        typer.Argument(
            help="A watch log (JSONL, schema modinspect.watch/1), as modinspect.watch "
            "writes it; a run still writing is fine. Two logs: the runs side by side, on the same axes.",
            show_default=False,
            metavar="LOG [OTHER]",
        ),
    ],
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write one self-contained HTML page (inline SVG, no network), atomically.",
            metavar="OUT.html",
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="Steps for the HTML's histograms, e.g. 100,200 "
            "\\[default: up to 12 logged steps, spread over the run].",
            metavar="N,N",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --html if it exists.")] = False,
    max_log_size: Annotated[
        str | None,
        typer.Option(
            "--max-log-size",
            help="Largest log to read (parsed, a log takes about 4 times its size in memory), "
            "e.g. 1G \\[default: 128M].",
            metavar="SIZE",
        ),
    ] = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show a training run's watch log: per module, sparklines over steps of std, ‖∇out‖ and dead fraction; the first bad step.

    Reads the JSONL log modinspect.watch writes (one record per logged step). A partial last line, from a run still writing, is skipped with a note. --html writes the pictures: loss, learning rate, update ratios and steps/s over steps, gradient flow, module × step heatmaps of std and gradient norm, dead fractions, histograms over time. Two logs compare two runs: both on the same axes in the HTML, side by side in the terminal.

    Examples:

        modinspect report runs/stats.jsonl

        modinspect report runs/stats.jsonl --html report.html --steps 100,2000

        modinspect report runs/baseline.jsonl runs/lr-1e-2.jsonl --html compare.html

        modinspect report runs/stats.jsonl --json | jq .first_bad
    """
    with user_errors(debug):
        from modinspect.commands.report import ReportRequest, run_comparison, run_report

        if len(logs) > 2:
            raise UsageError(
                f"report takes one log, or two to compare, not {len(logs)}: "
                "modinspect report A.jsonl [B.jsonl]"
            )
        request = ReportRequest(
            log=logs[0],
            html=html,
            steps=_parse_steps(steps),
            force=force,
            max_log_size=_log_size(max_log_size),
        )
        shown: RunReport | RunComparison
        if len(logs) == 2:
            shown = run_comparison(request, logs[1], announce=output.note, html_page=_html_page)
            modules = len(shown.modules)
            counts = f"{len(shown.a.steps)} and {len(shown.b.steps)} steps"
        else:
            shown = run_report(request, announce=output.note, html_page=_html_page)
            modules, counts = len(shown.modules), f"{len(shown.steps)} steps"
        if as_json or html is None:
            output.emit(shown, as_json, output.table_layout(wide, columns))
        else:
            from modinspect.render.text import visible

            print(f"wrote {visible(str(html))}: {modules} modules × {counts}")


def _log_size(option: str | None) -> int | None:
    from modinspect.sources.pickle.check import parse_size

    if option is None:
        return None
    try:
        return parse_size(option)
    except ValueError:
        raise UsageError(f"--max-log-size {option!r} is not a size like 512M or 2G") from None


def _html_page(run: RunReport | RunComparison, steps: tuple[int, ...]) -> str:
    """The run's (or two runs') HTML page (render.registry's `html` form), rendered only when --html asks."""
    from modinspect.render.registry import form_text

    return form_text(run, "html", steps=steps)


def _parse_steps(steps: str | None) -> tuple[int, ...] | None:
    if steps is None:
        return None
    parts = [p.strip() for p in steps.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(
            f"--steps {steps!r} is not a comma-separated list of step numbers like 100,200"
        )
    return tuple(int(p) for p in parts)


@app.command()
def doctor(
    source: SourceArg = None,
    weights: WeightsOpt = None,
    unsafe_pickle: UnsafeOpt = False,
    allow_global: AllowGlobalOpt = None,
    max_pickle_size: MaxPickleOpt = None,
    strict: StrictOpt = True,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="The example input: a .pt (weights-only) or .safetensors file, as stats reads it.",
            metavar="FILE",
        ),
    ] = None,
    input_shape: RandomInputShapeOpt = None,
    input_dtype: RandomInputDtypeOpt = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for model construction and random inputs.")
    ] = 0,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            help="training or inference: what the model is for \\[default: its "
            "own mode, model.training].",
            metavar="CONTEXT",
        ),
    ] = None,
    select: Annotated[
        list[str] | None,
        typer.Option("--select", help="Run only this check (repeatable).", metavar="ID"),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", help="Skip this check (repeatable).", metavar="ID"),
    ] = None,
    expect: Annotated[
        list[str] | None,
        typer.Option(
            "--expect",
            help="A custom autograd Function whose backward is meant to "
            "return MULT × the gradient, e.g. GradReverse=-0.1 (repeatable).",
            metavar="NAME=MULT",
        ),
    ] = None,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Exit 1 when a finding is at or above this severity: warning or error.",
            metavar="SEVERITY",
        ),
    ] = "warning",
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            min=0.0,
            help="CPU seconds of gradcheck per custom autograd Function.",
            metavar="SECONDS",
        ),
    ] = 2.0,
    explain: Annotated[
        str | None,
        typer.Option(
            "--explain",
            help="Print the longer story of check ID (or `list` for every check) and exit.",
            metavar="ID",
        ),
    ] = None,
    as_json: JsonOpt = False,
    sarif: Annotated[
        bool, typer.Option("--sarif", help="Print a SARIF 2.1.0 log (for code-scanning tools).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Find the classic nn.Module mistakes: unregistered layers, layers built in forward, unused parameters, softmax into CrossEntropyLoss, wrong custom backward...

    On a model (an entry point, a Hugging Face directory, ...) it inspects the live module, then runs one forward and backward on the example input (--input-shape/--input/example_input_array/\\[tool.modinspect], as stats) and checks what ran: custom torch.autograd.Functions get a float64 gradcheck on small inputs cut from the captured ones. On a checkpoint without code it checks the stored values. Findings are grouped by severity; exit 0 when none is at or above --fail-on (default warning), 1 when one is, 2 on errors.

    Examples:

        modinspect doctor models.py:build --input-shape 8,3,32,32

        modinspect doctor models.py:dann -s 8,64 --expect GradReverse=-0.1

        modinspect doctor ckpt.safetensors --fail-on error

        modinspect doctor models.py:build -s 4,16 --sarif > doctor.sarif

        modinspect doctor --explain unused-parameter
    """
    code = 0
    with user_errors(debug):
        from modinspect.commands.doctor import DoctorRequest, exit_code, parse_expect, run_doctor
        from modinspect.run.inputs import parse_shape

        if explain is not None:
            from modinspect.render.text import explain_text

            print(explain_text(explain))
            raise typer.Exit(0)
        if as_json and sarif:
            raise UsageError("--json and --sarif are two outputs: pick one")
        if fail_on not in ("warning", "error"):
            raise UsageError(f"--fail-on {fail_on!r} is not warning or error")
        gate = output.gate_options(allow_global, max_pickle_size)
        request = DoctorRequest(
            source=source,
            weights=weights,
            strict=strict,
            unsafe_pickle=unsafe_pickle,
            allow_globals=gate["allow_globals"],
            max_pickle_size=gate["max_pickle_size"],
            input_file=input_file,
            input_shapes=tuple(parse_shape(s) for s in input_shape or ()),
            input_dtype=input_dtype,
            seed=seed,
            context=context,
            select=tuple(select or ()),
            ignore=tuple(ignore or ()),
            expect=parse_expect(expect or ()),
            budget_s=budget,
        )
        with output.spinner("examining the model…"):
            report = run_doctor(request, announce=output.note)
        output.emit(report, as_json, form="sarif" if sarif else None)
        code = exit_code(report, fail_on)
    raise typer.Exit(code)


def main() -> None:
    app()
