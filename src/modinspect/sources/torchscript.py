"""TorchScript archives: the real module tree with class names, after a scan of their pickles."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from modinspect.errors import CorruptFileError, UnsafePickleError
from modinspect.sources.module import ModuleSource
from modinspect.sources.pickle_gate import is_safe_global, scan_globals


def _allowed_in_torchscript(dotted: str) -> bool:
    # __torch__.* classes are resolved by TorchScript's own compiler from the archive's code/,
    # not imported from Python; torch.jit._pickle.* rebuild lists. Anything else is refused.
    return dotted.startswith(("__torch__.", "torch.jit._pickle.")) or is_safe_global(dotted)


def open_torchscript(path: Path, label: str, zf: zipfile.ZipFile, prefix: str) -> ModuleSource:
    from modinspect.sources.torchfile import read_zip_member

    unsafe: list[str] = []
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    for member in ("data.pkl", "constants.pkl"):
        try:
            data = read_zip_member(zf, prefix + member, size, str(path))
        except KeyError:
            continue
        try:
            unsafe += [g for g in scan_globals(data) if not _allowed_in_torchscript(g)]
        except CorruptFileError as exc:
            raise CorruptFileError(f"{path} is a damaged TorchScript archive: {member} {exc}") from None
    if unsafe:
        raise UnsafePickleError(str(path), unsafe)
    import torch

    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but its archives are still everywhere.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path} is not a loadable TorchScript archive: {first}") from exc
    return ModuleSource(model, label, "torchscript")
