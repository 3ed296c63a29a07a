"""What a command does between parsing its options and exiting, without Typer: shared by cli/app.py and cli/launch.py.

cli/app.py parses with Typer; cli/launch.py parses a plain `diff A B` itself, so that a diff of two identical files
starts without importing typer, pydantic and rich. Both then call the same functions here, which is what
keeps their output and exit codes the same.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from modinspect.errors import ModinspectError, UsageError
from modinspect.render.text import TableLayout

ExitFactory = Callable[[int], BaseException]


def visible(line: str) -> str:
    """render.text.visible: control characters in a line for the terminal shown as escapes (imported when needed)."""
    if line.isprintable():
        return line
    from modinspect.render.text import visible as escape

    return escape(line)


def fail(message: str, exit_with: ExitFactory) -> BaseException:
    """Print the one `error: ...` line (control characters escaped); return the exit-2 exception to raise."""
    print(f"error: {visible(message)}", file=sys.stderr)
    return exit_with(2)


@contextlib.contextmanager
def user_errors(
    debug: bool, exit_with: ExitFactory, passthrough: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """ModinspectError -> one line on stderr and exit 2; anything else is a bug, shown in full under --debug.

    `exit_with(code)` is the exception that ends the command with `code` (typer.Exit, or SystemExit), and
    `passthrough` the exceptions that already do.
    """
    try:
        yield
    except passthrough:
        raise
    except ModinspectError as exc:
        if debug:
            traceback.print_exc()
        raise fail(str(exc), exit_with) from None
    except BrokenPipeError:
        # The reader went away (`modinspect tree x | head`): stop quietly, as a C tool killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise exit_with(141) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise exit_with(130) from None
    except Exception as exc:
        if debug:
            raise
        raise fail(
            f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it",
            exit_with,
        ) from None


def gate_options(
    allow_global: list[str] | None, max_pickle_size: str | None, max_layers: int | None = None
) -> dict[str, Any]:
    """--allow-global, --max-pickle-size and --max-layers as open_source keywords."""
    from modinspect.sources.pickle.check import parse_size

    size = None
    if max_pickle_size is not None:
        try:
            size = parse_size(max_pickle_size)
        except ValueError:
            raise UsageError(
                f"--max-pickle-size {max_pickle_size!r} is not a size like 512M or 2G"
            ) from None
    for name in allow_global or ():
        if "." not in name or not all(part.isidentifier() for part in name.split(".")):
            raise UsageError(
                f"--allow-global {name!r} is not a dotted name like argparse.Namespace"
            )
    if allow_global:
        from modinspect.sources.pickle.gate import check_allow_globals

        check_allow_globals(tuple(allow_global))
    return {
        "allow_globals": tuple(allow_global or ()),
        "max_pickle_size": size,
        "max_layers": max_layers,
    }


def spinner(message: str) -> contextlib.AbstractContextManager[object]:
    """render.console's spinner on a terminal; elsewhere nothing, and rich is not even imported."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from modinspect.render.console import progress

    return progress(message)


def warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {visible(line)}", file=sys.stderr)


def note(line: str) -> None:
    print(f"note: {visible(line)}", file=sys.stderr)


def table_layout(wide: bool, columns: str | None) -> TableLayout | None:
    """--wide and --columns as the renderers take them (None: the default, fitted to the terminal)."""
    if not wide and columns is None:
        return None
    picked = (
        tuple(c.strip() for c in columns.split(",") if c.strip()) if columns is not None else None
    )
    return TableLayout(wide=wide, columns=picked)


def emit(report: object, as_json: bool, layout: TableLayout | None = None, **options: Any) -> None:
    """render.registry.emit: the report as its console view or its JSON document (imported when needed).

    `layout` (stats, diff, report): --wide writes lines as long as their content; --columns picks the
    table's columns. `options`: another output of the report (`form="sarif"`, `form="html"`).
    """
    from modinspect.render.registry import emit as emit_report

    emit_report(report, as_json, layout=layout, **options)


@dataclass(frozen=True)
class DiffArgs:
    """`modinspect diff`'s arguments, as parsed (by Typer or by cli/launch.py)."""

    a: str
    b: str
    weights_a: str | None = None
    weights_b: str | None = None
    atol: float | None = None
    rtol: float | None = None
    exact: bool = False
    nan_unequal: bool = False
    strip_prefix: tuple[str, ...] = ()
    rename: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    unsafe_pickle: bool = False
    allow_global: tuple[str, ...] = ()
    max_pickle_size: str | None = None
    max_layers: int | None = None
    hf_names: bool = False
    as_json: bool = False
    wide: bool = False
    columns: str | None = None


def _progress_bar(total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """render.console's progress bar over `total` bytes on a terminal; elsewhere nothing, without rich."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(lambda _n: None)
    from modinspect.render.console import progress_bar

    return progress_bar(total, "comparing")


def run_diff(args: DiffArgs) -> int:
    """Run commands.diff on the parsed arguments, print the report; the exit code: 0 when they match, 1 when they differ."""
    from modinspect.commands.diff import DiffRequest
    from modinspect.commands.diff import run_diff as diff_command
    from modinspect.names import KeyMap, parse_renames

    keymap = KeyMap(
        strip_prefixes=args.strip_prefix,
        renames=parse_renames(args.rename),
        include=args.include,
        exclude=args.exclude,
    )
    request = DiffRequest(
        a=args.a,
        b=args.b,
        weights_a=args.weights_a,
        weights_b=args.weights_b,
        atol=args.atol,
        rtol=args.rtol,
        exact=args.exact,
        nan_equal=not args.nan_unequal,
        keymap=keymap,
        unsafe_pickle=args.unsafe_pickle,
        **gate_options(list(args.allow_global), args.max_pickle_size, args.max_layers),
        hf_names=args.hf_names,
    )
    report = diff_command(request, warn=warn, phase=spinner, progress=_progress_bar)
    emit(report, args.as_json, table_layout(args.wide, args.columns))
    sys.stdout.flush()  # a closed pipe shows here, inside user_errors, not at exit
    return 1 if report.differs else 0
