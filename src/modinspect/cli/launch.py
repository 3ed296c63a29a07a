"""The `modinspect` entry point: a plain `modinspect diff A B [options]` runs without importing Typer.

`diff` is a diff(1)-like tool that scripts call on every checkpoint they write; comparing two identical files
takes a fraction of a second, and importing typer, pydantic and rich to parse its arguments took a third
of that. So a diff invocation whose every argument is one of diff's own options, spelled plainly, is parsed
here and run by the same `output.run_diff` the Typer command calls; anything else (another command,
--help, --debug, `--`, an unknown or malformed option, a value Typer would refuse) goes to the Typer app,
which parses it, and explains what is wrong, as always.
"""

from __future__ import annotations

import gc
import math
import sys
from typing import Any

from modinspect.cli import output

_FLAGS = {
    "--json": "as_json",
    "--exact": "exact",
    "--nan-unequal": "nan_unequal",
    "--unsafe-pickle": "unsafe_pickle",
    "--wide": "wide",
    "--hf-names": "hf_names",
}
_VALUES = {
    "--weights-a": "weights_a",
    "--weights-b": "weights_b",
    "--atol": "atol",
    "--rtol": "rtol",
    "--max-pickle-size": "max_pickle_size",
}
_REPEATED = {
    "--strip-prefix": "strip_prefix",
    "--rename": "rename",
    "--include": "include",
    "--exclude": "exclude",
    "--allow-global": "allow_global",
}
_TOLERANCES = ("atol", "rtol")


def parse_diff(argv: list[str]) -> output.DiffArgs | None:
    """`diff A B [options]` as DiffArgs, or None where the Typer app should parse it."""
    if not argv or argv[0] != "diff":
        return None
    positional: list[str] = []
    fields: dict[str, Any] = {}
    repeated: dict[str, list[str]] = {}
    tokens = iter(argv[1:])
    for token in tokens:
        if not token.startswith("-"):
            positional.append(token)
            continue
        name, eq, inline = token.partition("=")
        if name in _FLAGS and not eq:
            fields[_FLAGS[name]] = True
            continue
        if name not in _VALUES and name not in _REPEATED:
            return None  # --help, --debug, `--`, -x, an unknown option, a flag given a value
        value = inline if eq else next(tokens, None)
        if value is None or (not eq and value.startswith("-")):
            return None
        if name in _REPEATED:
            repeated.setdefault(_REPEATED[name], []).append(value)
        else:
            fields[_VALUES[name]] = value  # the last one counts, as in Typer
    if len(positional) != 2:
        return None
    for key in _TOLERANCES:
        if key in fields:
            try:
                number = float(fields[key])
            except ValueError:
                return None
            if not math.isfinite(number) or number < 0:
                return None  # Typer's message says what is wrong
            fields[key] = number
    fields.update((k, tuple(v)) for k, v in repeated.items())
    return output.DiffArgs(positional[0], positional[1], **fields)


def main() -> None:
    args = parse_diff(sys.argv[1:])
    if args is None:
        from modinspect.cli.app import main as typer_main

        typer_main()
        return
    with output.user_errors(False, SystemExit):
        code = output.run_diff(args)
    # All that is left is the interpreter's exit, whose collections walk every object still tracked (torch's
    # modules, after a diff that needed arithmetic: about 0.3 s on this machine); frozen ones are skipped.
    gc.freeze()
    sys.exit(code)
