"""The Typer app. Each command parses options, calls one analysis, picks one renderer, sets the exit code."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import Annotated, NoReturn

import typer

from modinspect import __version__
from modinspect.errors import ModinspectError

app = typer.Typer(
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
        help="A checkpoint (.safetensors, sharded dir or index, .pt/.pth/.bin/.ckpt, TorchScript) or an entry "
        "point path/file.py:NAME or package.module:NAME. Default: the \\[tool.modinspect] table of the nearest pyproject.toml.",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    str | None, typer.Option("--weights", "-w", help="Checkpoint to load into the model SOURCE builds.", metavar="CHECKPOINT")
]
MetaOpt = Annotated[bool, typer.Option("--meta", help="Build an entry point's model on the meta device (no memory).")]
UnsafeOpt = Annotated[
    bool,
    typer.Option("--unsafe-pickle", help="Allow full unpickling: runs code from the file. Only for files you trust."),
]
StrictOpt = Annotated[bool, typer.Option("--strict/--no-strict", help="--weights must match every key.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of the rich view.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """ModinspectError -> one line on stderr and exit 2; anything else is a bug, shown in full under --debug."""
    debug = debug or _state["debug"]
    try:
        yield
    except typer.Exit:
        raise
    except ModinspectError as exc:
        if debug:
            traceback.print_exc()
        _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it")


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        print(f"modinspect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
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
    strict: StrictOpt = True,
    depth: Annotated[int | None, typer.Option("--depth", "-d", min=0, help="Show at most N levels.")] = None,
    pattern: Annotated[
        str | None, typer.Option("--filter", "-f", help="Show only modules/tensors matching GLOB.", metavar="GLOB")
    ] = None,
    expand: Annotated[bool, typer.Option("--expand", help="Do not collapse runs of identical blocks.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the module tree with parameter counts, buffers, dtypes and bytes; tied weights counted once.

    Reads checkpoints without the model's code (a safetensors header, a torch pickle through the weights-only gate) or builds a model from an entry point. Runs of identical blocks collapse into one row (h.0 … h.11 ×12).

    Examples:

        modinspect tree model.safetensors

        modinspect tree gpt2/ --depth 2

        modinspect tree models.py:build_model --weights ckpt.pt --filter 'encoder.*'

        modinspect tree ckpt.pth --json | jq .totals.params
    """
    with user_errors(debug):
        from modinspect.analysis.tree import build_tree
        from modinspect.sources import open_source

        with open_source(source, weights=weights, meta=meta, unsafe_pickle=unsafe_pickle, strict=strict) as src:
            _warn(src.warnings)
            report = build_tree(src, depth=depth, pattern=pattern, expand=expand)
        if as_json:
            from modinspect.render.jsonout import dumps, tree_document

            print(dumps(tree_document(report)))
        else:
            from modinspect.render.console import make_console, tree_renderable

            make_console().print(tree_renderable(report))


def main() -> None:
    app()
