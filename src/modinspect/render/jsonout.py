"""Reports -> the stable JSON documents users script against. Field names and their order are API: keep them.

Each document is generated from the report's dataclass fields (render.jsondoc); the one table per report
below names every departure from the fields: a rename, a field left out and why, another shape, an added
key, the order. `tests/test_emit.py` fails on a field that is neither in a document nor excluded by name.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TypeVar

from modinspect.render.jsondoc import Doc, Schema, pairs
from modinspect.reports import (
    DiffReport,
    DtypeTotal,
    LoadPlan,
    LoadReport,
    ModuleRow,
    ModuleSeries,
    ModuleShapes,
    ModuleStats,
    NonfiniteOrigin,
    RunReport,
    ShapesReport,
    ShapesTotals,
    StatsReport,
    TensorDiff,
    TensorRow,
    TreeReport,
)
from modinspect.reports.compare import RunComparison
from modinspect.reports.doctor import DoctorReport, Finding, Location
from modinspect.version import __version__

SCHEMA_VERSION = (
    2  # 2: tree's tensors and by_dtype gained bits_per_weight; diff's pairs a note, and bytewise
)
DOCTOR_SCHEMA = "modinspect.doctor/1"

R = TypeVar("R")


def _envelope() -> dict[str, Any]:
    """The fields every document starts with."""
    return {"schema_version": SCHEMA_VERSION, "modinspect_version": __version__}


def _bits(record: Any, _walk: Any) -> float | None:
    return record.bits_per_weight  # type: ignore[no-any-return]


# ------------------------------------------------------------------ tree
TREE: Schema[TreeReport] = Schema(
    TreeReport,
    {
        TreeReport: Doc(
            exclude={
                "root": "the displayed tree: `modules` holds its rows, flat",
                "extra_reprs": "each module's is its `extra_repr`",
            },
            convert={"other_entries": pairs("name", "summary"), "metadata": dict},
            after={
                "state_dict_key": "training",
                "filter": "state_dict_key",
                "by_scheme": "by_dtype",
                "shapes": "would_call",
            },
            items={
                "by_scheme": Doc(
                    rename={"dtype": "scheme", "elements": "params"}, add={"bits_per_weight": _bits}
                )
            },
        ),
        DtypeTotal: Doc(add={"bits_per_weight": _bits}),
        ModuleRow: Doc(
            exclude={
                "parent_training": "the console's eval-under-train marker; `training` is the module's"
            },
            add={"extra_repr": lambda m, walk: walk.lookup("extra_reprs").get(m.name)},
            after={"extra_repr": "training"},
        ),
        TensorRow: Doc(
            rename={"nbytes": "bytes"},
            add={"bits_per_weight": _bits},
            after={"kind": "dtype", "bits_per_weight": "bytes"},
        ),
        ShapesReport: Doc(after={"totals": "training"}),
        ShapesTotals: Doc(add={"macs": lambda t, _w: t.macs}),
        ModuleShapes: Doc(add={"macs": lambda m, _w: m.macs}, after={"macs": "flops"}),
    },
    _envelope,
)

# ------------------------------------------------------------------ stats
STATS: Schema[StatsReport] = Schema(
    StatsReport,
    {
        StatsReport: Doc(
            after={"backward_origin": "nonfinite_origin", "diagnoses": "nonfinite_found"},
        ),
        ModuleStats: Doc(after={"histogram_edges": "histogram"}),
        NonfiniteOrigin: Doc(
            exclude={
                "caller": "watch's (the user's line that called the model): stats calls it itself",
                "caller_code": "watch's, as `caller`",
            }
        ),
    },
    _envelope,
)

# ------------------------------------------------------------------ diff
DIFF: Schema[DiffReport] = Schema(
    DiffReport,
    {
        DiffReport: Doc(
            rename={"rollup": "modules"},
            convert={"aliased": pairs("name", "via")},
            add={"differs": lambda r, _w: r.differs},
            after={"differs": "format_b", "module_status": "modules"},
        ),
        TensorDiff: Doc(exclude={"status": "the list it is in says it: `changed` or `close`"}),
    },
    _envelope,
)


# ------------------------------------------------------------------ load
def _names(records: Any) -> list[str]:
    return [r.name for r in records]


def _renamed(sources: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"model": a, "checkpoint": b} for a, b in sources if a != b]


LOAD: Schema[LoadReport] = Schema(
    LoadReport,
    {
        LoadReport: Doc(
            inline=("plan",),
            exclude={"cast_errors": "each cast key's is its `cast_dtypes` entry's `max_abs_error`"},
            after={"strict_ok": "strict", "skip_mismatched": "strict_ok"},
        ),
        LoadPlan: Doc(
            rename={"sources": "renamed"},
            convert={"mismatched": _names, "cast": _names, "sources": _renamed},
            add={
                "strict_ok": lambda p, _w: p.strict_ok,
                "mismatched_shapes": lambda p, _w: p.mismatched,
                "cast_dtypes": lambda p, _w: p.cast,
            },
            after={
                "mismatched": "unexpected",
                "cast": "mismatched",
                "mismatched_shapes": "tied",
                "cast_dtypes": "mismatched_shapes",
            },
            items={
                "tied": Doc(rename={"target": "via"}),
                "cast_dtypes": Doc(
                    add={"max_abs_error": lambda m, walk: walk.lookup("cast_errors").get(m.name)}
                ),
            },
        ),
    },
    _envelope,
)

# ------------------------------------------------------------------ report (a watch log)
_RUN_DOCS: dict[type, Doc] = {
    RunReport: Doc(rename={"times": "time"}),
    ModuleSeries: Doc(after={"histograms": "flags"}),
}
RUN: Schema[RunReport] = Schema(RunReport, _RUN_DOCS, _envelope)


# `report A B`: both runs' documents as `report A --json` has them, then the modules paired
COMPARISON: Schema[RunComparison] = Schema(RunComparison, _RUN_DOCS, _envelope)


# ------------------------------------------------------------------ doctor
DOCTOR: Schema[DoctorReport] = Schema(
    DoctorReport,
    {
        DoctorReport: Doc(
            convert={"context": lambda v: v or None, "inputs": lambda v: v or None},
            add={
                "schema": lambda _r, _w: DOCTOR_SCHEMA,
                "counts": lambda r, _w: {s: r.count(s) for s in ("error", "warning", "info")},
            },
            after={"schema": "", "counts": "inputs"},
        ),
        Finding: Doc(inline=("where",)),
        Location: Doc(add={"key": lambda loc, _w: loc.key}),
    },
    _envelope,
)


def tree_document(report: TreeReport, rows: bool = True) -> dict[str, Any]:
    """The tree as a JSON-ready dict; `rows=False` leaves the modules and tensors lists empty."""
    return TREE.document(report, frozenset() if rows else frozenset({"modules", "tensors"}))


def stats_document(report: StatsReport) -> dict[str, Any]:
    return STATS.document(report)


def diff_document(report: DiffReport) -> dict[str, Any]:
    return DIFF.document(report)


def load_document(report: LoadReport) -> dict[str, Any]:
    return LOAD.document(report)


def run_document(report: RunReport) -> dict[str, Any]:
    """`modinspect report --json`: the run's series, aligned with `steps`, and the first bad step."""
    return RUN.document(report)


def doctor_document(report: DoctorReport) -> dict[str, Any]:
    """The doctor report: findings flattened (where.* as module/attribute/function/file/line), counts, checks."""
    return DOCTOR.document(report)


TABLES: dict[type, Schema[Any]] = {
    s.report: s for s in (TREE, STATS, DIFF, LOAD, RUN, COMPARISON, DOCTOR)
}
_PLAIN: dict[type, Schema[Any]] = {}


def schema_of(report_type: type[R]) -> Schema[R]:
    """The report type's table above; a report without one is the envelope, then its fields as they are."""
    found = TABLES.get(report_type) or _PLAIN.get(report_type)
    if found is None:
        found = _PLAIN[report_type] = Schema(report_type, {}, _envelope)
    return found


_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_encode_str = json.encoder.encode_basestring  # what the encoder above writes for a str (C)
_LITERAL = {True: "true", False: "false", None: "null"}


def dumps(
    document: dict[str, Any],
    pretty: bool | None = None,
    records: dict[str, list[str]] | None = None,
) -> str:
    """The document as JSON text: one compact line, or for a terminal (`pretty=None` asks stdout) one record a line.

    Both go through the json module's C encoder: its indent option would switch to the pure-Python one,
    which takes seconds on a 100k-tensor tree. "Pretty" puts each top-level field on its own line and each
    element of a list field (a module, a tensor, a changed pair) on its own line: it reads well and costs
    no more than the compact form. `records` gives list fields already encoded, one string an element.
    """
    if pretty is None:
        pretty = sys.stdout.isatty()
    records = records or {}
    if not pretty and not records:
        return _COMPACT.encode(document)
    encode = _COMPACT.encode
    fields = []
    for key, value in document.items():
        items = records.get(key)
        if items is None and pretty and isinstance(value, list) and value:
            items = [encode(item) for item in value]
        if items is None:
            fields.append(f"{_encode_str(key)}:{encode(value)}")
        elif pretty:
            fields.append(
                f"{_encode_str(key)}:[\n    " + ",\n    ".join(items) + "\n  ]"
                if items
                else f"{_encode_str(key)}:[]"
            )
        else:
            fields.append(f"{_encode_str(key)}:[" + ",".join(items) + "]")
    return "{\n  " + ",\n  ".join(fields) + "\n}" if pretty else "{" + ",".join(fields) + "}"


def _module_records(report: TreeReport) -> list[str]:
    enc, lit = _encode_str, _LITERAL
    reprs = dict(report.extra_reprs)
    return [
        f'{{"name":{enc(m.name)},"type":{"null" if m.type is None else enc(m.type)},"params":{m.params:d},'
        f'"bytes":{m.bytes:d},"trainable":{"null" if m.trainable is None else format(m.trainable, "d")},'
        f'"training":{lit[m.training]},"extra_repr":{"null" if (r := reprs.get(m.name)) is None else enc(r)},'
        f'"scheme":{"null" if m.scheme is None else enc(m.scheme)},'
        f'"bits_per_weight":{"null" if m.bits_per_weight is None else float.__repr__(m.bits_per_weight)}}}'
        for m in report.modules
    ]


def _tensor_records(report: TreeReport) -> list[str]:
    enc, lit = _encode_str, _LITERAL
    names: dict[str, str] = {}  # dtypes and kinds: a handful of distinct strings
    bits: dict[float, str] = {}  # bits per weight: as many as dtypes
    out = []
    for r in report.tensors:
        dtype = names.get(r.dtype) or names.setdefault(r.dtype, enc(r.dtype))
        kind = names.get(r.kind) or names.setdefault(r.kind, enc(r.kind))
        shape = ",".join([format(d, "d") for d in r.shape])
        alias = "null" if r.alias_of is None else enc(r.alias_of)
        numel = r.numel
        bpw = (
            "null"
            if not numel
            else bits.get(b := r.nbytes * 8 / numel) or bits.setdefault(b, float.__repr__(b))
        )
        out.append(
            f'{{"name":{enc(r.name)},"shape":[{shape}],"dtype":{dtype},"kind":{kind},"bytes":{r.nbytes:d},'
            f'"bits_per_weight":{bpw},"requires_grad":{lit[r.requires_grad]},"persistent":{lit[r.persistent]},'
            f'"alias_of":{alias},"scheme":{"null" if r.scheme is None else enc(r.scheme)},'
            f'"logical_shape":{_shape_json(r.logical_shape)}}}'
        )
    return out


def _shape_json(shape: tuple[int, ...] | None) -> str:
    return "null" if shape is None else "[" + ",".join([format(d, "d") for d in shape]) + "]"


def tree_json(report: TreeReport, pretty: bool | None = None) -> str:
    """tree_document(report) as JSON text, its module and tensor lists written record by record.

    A 100k-tensor tree would otherwise build 170k dicts only to encode them once; this is the same
    document (tests compare the two), in a third of the time and none of that memory.
    """
    document = tree_document(report, rows=False)
    return dumps(
        document, pretty, {"modules": _module_records(report), "tensors": _tensor_records(report)}
    )
