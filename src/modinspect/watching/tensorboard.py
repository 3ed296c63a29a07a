"""`watch(tensorboard=DIR)`: each log record's scalars and histograms through torch.utils.tensorboard."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from modinspect.errors import UsageError

MODULE_SCALARS = (
    "mean",
    "std",
    "min",
    "max",
    "zero_fraction",
    "nan",
    "inf",
    "dead_fraction",
    "grad_norm",
    "grad_nan",
    "grad_inf",
)
PARAM_SCALARS = ("norm", "grad_norm", "update_norm", "update_ratio")


def module_tag(name: str, key: str) -> str:
    """`activations/features.0/std`; the root module is `(model)`."""
    return f"activations/{name or '(model)'}/{key}"


def param_tag(name: str, key: str) -> str:
    return f"params/{name}/{key}"


class TensorBoardWriter:
    """Writes what a log record holds; values that are null in the log (NaN, Inf, absent) are not written."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UsageError(
                "tensorboard= needs the tensorboard package: pip install 'modinspect[tensorboard]'"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        w = self.writer
        if record.get("loss") is not None:
            w.add_scalar("loss", record["loss"], step)
        for m in record["modules"]:
            for key in MODULE_SCALARS:
                if m.get(key) is not None:
                    w.add_scalar(module_tag(m["name"], key), m[key], step)
            hist = m.get("histogram")
            if hist and sum(hist["counts"]):
                edges, counts = hist["edges"], hist["counts"]
                centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
                # TensorBoard wants the sampled values' sum and sum of squares: taken from the bin centres.
                w.add_histogram_raw(
                    module_tag(m["name"], "histogram"),
                    min=edges[0],
                    max=edges[-1],
                    num=sum(counts),
                    sum=sum(c * x for c, x in zip(counts, centres, strict=True)),
                    sum_squares=sum(c * x * x for c, x in zip(counts, centres, strict=True)),
                    bucket_limits=edges[1:],
                    bucket_counts=counts,
                    global_step=step,
                )
        for p in record["params"]:
            for key in PARAM_SCALARS:
                if p.get(key) is not None:
                    w.add_scalar(param_tag(p["name"], key), p[key], step)
        w.flush()

    def close(self) -> None:
        self.writer.close()
