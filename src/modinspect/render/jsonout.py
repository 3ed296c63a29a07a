"""Reports -> the stable JSON documents users script against. Field names are API: keep them."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from modinspect.reports import (
    DiffReport,
    LoadReport,
    NonfiniteOrigin,
    RunReport,
    ShapesReport,
    StatsReport,
    TensorDiff,
    TreeReport,
)
from modinspect.reports.doctor import DoctorReport
from modinspect.version import __version__

SCHEMA_VERSION = (
    2  # 2: tree's tensors and by_dtype gained bits_per_weight; diff's pairs a note, and bytewise
)


def _envelope() -> dict[str, Any]:
    """The fields every document starts with."""
    return {"schema_version": SCHEMA_VERSION, "modinspect_version": __version__}


def tree_document(report: TreeReport, rows: bool = True) -> dict[str, Any]:
    """The tree as a JSON-ready dict; `rows=False` leaves the modules and tensors lists empty."""
    t = report.totals
    reprs = dict(report.extra_reprs)
    return {
        **_envelope(),
        "source": report.source,
        "format": report.format,
        "module_known": report.module_known,
        "training": report.training,
        "state_dict_key": report.state_dict_key,
        "filter": report.filter,
        "totals": {
            "params": t.params,
            "trainable": t.trainable,
            "frozen": t.frozen,
            "buffers": t.buffers,
            "persistent_buffers": t.persistent_buffers,
            "non_persistent_buffers": t.non_persistent_buffers,
            "bytes": t.bytes,
            "tensors": t.tensors,
        },
        "by_dtype": [
            {
                "dtype": d.dtype,
                "elements": d.elements,
                "bytes": d.bytes,
                "bits_per_weight": d.bits_per_weight,
            }
            for d in report.by_dtype
        ],
        "by_scheme": [
            {
                "scheme": d.dtype,
                "params": d.elements,
                "bytes": d.bytes,
                "bits_per_weight": d.bits_per_weight,
            }
            for d in report.by_scheme
        ],
        "modules": [
            {
                "name": m.name,
                "type": m.type,
                "params": m.params,
                "bytes": m.bytes,
                "trainable": m.trainable,
                "training": m.training,
                "extra_repr": reprs.get(m.name),
                "scheme": m.scheme,
                "bits_per_weight": m.bits_per_weight,
            }
            for m in (report.modules if rows else ())
        ],
        "tensors": [
            {
                "name": r.name,
                "shape": list(r.shape),
                "dtype": r.dtype,
                "kind": r.kind,
                "bytes": r.nbytes,
                "bits_per_weight": r.bits_per_weight,
                "requires_grad": r.requires_grad,
                "persistent": r.persistent,
                "alias_of": r.alias_of,
                "scheme": r.scheme,
                "logical_shape": None if r.logical_shape is None else list(r.logical_shape),
            }
            for r in (report.tensors if rows else ())
        ],
        "tied": [list(g) for g in report.tied],
        "other_entries": [{"name": n, "summary": s} for n, s in report.other_entries],
        "metadata": dict(report.metadata),
        "notes": list(report.notes),
        "would_call": list(report.would_call),
        "shapes": _shapes_document(report.shapes),
    }


def _shapes_document(shapes: ShapesReport | None) -> dict[str, Any] | None:
    if shapes is None:
        return None
    t = shapes.totals
    return {
        "inputs": shapes.inputs,
        "training": shapes.training,
        "totals": {
            "input_bytes": t.input_bytes,
            "forward_bytes": t.forward_bytes,
            "backward_bytes": t.backward_bytes,
            "param_bytes": t.param_bytes,
            "buffer_bytes": t.buffer_bytes,
            "flops": t.flops,
            "macs": t.macs,
        },
        "modules": [
            {
                "name": m.name,
                "type": m.type,
                "calls": m.calls,
                "output_shapes": [list(s) for s in m.output_shapes],
                "output_dtypes": list(m.output_dtypes),
                "flops": m.flops,
                "macs": m.macs,
                "output_bytes": m.output_bytes,
                "saved_bytes": m.saved_bytes,
            }
            for m in shapes.modules
        ],
    }


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


def _num(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: non-finite floats become null."""
    return value if value is not None and math.isfinite(value) else None


def stats_document(report: StatsReport) -> dict[str, Any]:
    origin = report.nonfinite_origin
    return {
        **_envelope(),
        "source": report.source,
        "device": report.device,
        "dtype": report.dtype,
        "mode": report.mode,
        "batches": report.batches,
        "backward": report.backward,
        "loss": report.loss,
        "inputs": report.inputs,
        "modules": [
            {
                "name": m.name,
                "type": m.type,
                "calls": m.calls,
                "count": m.count,
                "mean": _num(m.mean),
                "std": _num(m.std),
                "min": _num(m.min),
                "max": _num(m.max),
                "mean_abs": _num(m.mean_abs),
                "zero_fraction": _num(m.zero_fraction),
                "nan": m.nan,
                "inf": m.inf,
                "dead_fraction": _num(m.dead_fraction),
                "units": m.units,
                "grad_norm": _num(m.grad_norm),
                "grad_nan": m.grad_nan,
                "grad_inf": m.grad_inf,
                "param_grad_norm": _num(m.param_grad_norm),
                "param_grad_nan": m.param_grad_nan,
                "param_grad_inf": m.param_grad_inf,
                "histogram": list(m.histogram),
                "histogram_edges": [_num(e) for e in m.histogram_edges],
                "flags": list(m.flags),
                "input_from": m.input_from,
            }
            for m in report.modules
        ],
        "nonfinite_origin": _origin(origin),
        "backward_origin": _origin(report.backward_origin),
        "nonfinite_found": report.nonfinite_found,
        "diagnoses": list(report.diagnoses),
        "notes": list(report.notes),
        "frozen": None
        if report.frozen is None
        else {
            "params": report.frozen.params,
            "total": report.frozen.total,
            "tensors": report.frozen.tensors,
            "modules": list(report.frozen.modules),
        },
        "would_call": list(report.would_call),
    }


def _origin(origin: NonfiniteOrigin | None) -> dict[str, Any] | None:
    if origin is None:
        return None
    return {
        "module": origin.module,
        "type": origin.type,
        "phase": origin.phase,
        "cause": origin.cause,
        "passed_on": list(origin.passed_on),
        "op": origin.op,
        "source": origin.source,
        "code": origin.code,
        "node": origin.node,
        "created_at": origin.created_at,
        "created_code": origin.created_code,
        "tensor": origin.tensor,
        "detail": origin.detail,
        "rank": origin.rank,
    }


def _tensor_diff(d: TensorDiff) -> dict[str, Any]:
    return {
        "name": d.name,
        "a_name": d.a_name,
        "b_name": d.b_name,
        "shape": list(d.shape),
        "dtype_a": d.dtype_a,
        "dtype_b": d.dtype_b,
        "numel": d.numel,
        "differing": d.differing,
        "max_abs_diff": _num(d.max_abs_diff),
        "mean_abs_diff": _num(d.mean_abs_diff),
        "rel_l2": _num(d.rel_l2),
        "cosine": _num(d.cosine),
        "nan_a": d.nan_a,
        "nan_b": d.nan_b,
        "inf_a": d.inf_a,
        "inf_b": d.inf_b,
        "note": d.note,
    }


def diff_document(report: DiffReport) -> dict[str, Any]:
    return {
        **_envelope(),
        "a": report.a,
        "b": report.b,
        "format_a": report.format_a,
        "format_b": report.format_b,
        "differs": report.differs,
        "only_in_a": list(report.only_in_a),
        "only_in_b": list(report.only_in_b),
        "shape_mismatch": [{"name": m.name, "a": m.a, "b": m.b} for m in report.shape_mismatch],
        "dtype_mismatch": [{"name": m.name, "a": m.a, "b": m.b} for m in report.dtype_mismatch],
        "changed": [_tensor_diff(d) for d in report.changed],
        "close": [_tensor_diff(d) for d in report.close],
        "equal": report.equal,
        "identical": report.identical,
        "compared": report.compared,
        "aliased": [{"name": n, "via": v} for n, v in report.aliased],
        "modules": [
            {
                "module": r.module,
                "tensors": r.tensors,
                "changed": r.changed,
                "max_abs_diff": _num(r.max_abs_diff),
            }
            for r in report.rollup
        ],
        "module_status": [
            {"module": m.module, "status": m.status, "tensors": m.tensors}
            for m in report.module_status
        ],
        "hints": list(report.hints),
        "tolerance": report.tolerance,
        "nan_equal": report.nan_equal,
        "bytewise": report.bytewise,
        "would_call_a": list(report.would_call_a),
        "would_call_b": list(report.would_call_b),
    }


def load_document(report: LoadReport) -> dict[str, Any]:
    plan = report.plan
    return {
        **_envelope(),
        "model": report.model,
        "checkpoint": report.checkpoint,
        "loaded": list(plan.loaded),
        "missing": list(plan.missing),
        "unexpected": list(plan.unexpected),
        "mismatched": [m.name for m in plan.mismatched],
        "cast": [m.name for m in plan.cast],
        "tied": [{"name": a.name, "via": a.target} for a in plan.tied],
        "mismatched_shapes": [
            {"name": m.name, "model": m.model, "checkpoint": m.checkpoint} for m in plan.mismatched
        ],
        "cast_dtypes": [
            {
                "name": m.name,
                "model": m.model,
                "checkpoint": m.checkpoint,
                "max_abs_error": _num(dict(report.cast_errors).get(m.name)),
            }
            for m in plan.cast
        ],
        "renamed": [{"model": a, "checkpoint": b} for a, b in plan.sources if a != b],
        "hints": list(plan.hints),
        "strict": report.strict,
        "strict_ok": plan.strict_ok,
        "performed": report.performed,
        "dry_run": report.dry_run,
        "written": report.written,
        "would_call": list(report.would_call),
    }


def _series(values: tuple[float | None, ...]) -> list[float | None]:
    return [_num(v) for v in values]


def run_document(report: RunReport) -> dict[str, Any]:
    """`modinspect report --json`: the run's series, aligned with `steps`, and the first bad step."""
    h, bad = report.header, report.first_bad
    return {
        **_envelope(),
        "path": report.path,
        "header": {
            "schema": h.schema,
            "model": h.model,
            "every": h.every,
            "started": h.started,
            "device": h.device,
            "world_size": h.world_size,
        },
        "steps": list(report.steps),
        "time": list(report.times),
        "loss": _series(report.loss),
        "modules": [
            {
                "name": m.name,
                "type": m.type,
                "logged": list(m.logged),
                "std": _series(m.std),
                "mean": _series(m.mean),
                "grad_norm": _series(m.grad_norm),
                "dead_fraction": _series(m.dead_fraction),
                "nonfinite": list(m.nonfinite),
                "grad_nonfinite": list(m.grad_nonfinite),
                "first_bad_step": m.first_bad_step,
                "grad_norm_mean": _num(m.grad_norm_mean),
                "grad_norm_max": _num(m.grad_norm_max),
                "flags": list(m.flags),
                "histograms": [
                    {"step": g.step, "edges": list(g.edges), "counts": list(g.counts)}
                    for g in m.histograms
                ],
            }
            for m in report.modules
        ],
        "params": [
            {
                "name": p.name,
                "norm": _series(p.norm),
                "grad_norm": _series(p.grad_norm),
                "update_norm": _series(p.update_norm),
                "update_ratio": _series(p.update_ratio),
            }
            for p in report.params
        ],
        "first_bad": None
        if bad is None
        else {
            "step": bad.step,
            "module": bad.module,
            "type": bad.type,
            "phase": bad.phase,
            "op": bad.op,
            "source": bad.source,
            "code": bad.code,
            "cause": bad.cause,
            "recorded": bad.recorded,
            "affected": list(bad.affected),
            "rank": bad.rank,
        },
        "truncated": report.truncated,
        "notes": list(report.notes),
    }


DOCTOR_SCHEMA = "modinspect.doctor/1"


def doctor_document(report: DoctorReport) -> dict[str, Any]:
    """The doctor report: findings flattened (where.* as module/attribute/function/file/line), counts, checks."""
    return {
        **_envelope(),
        "schema": DOCTOR_SCHEMA,
        "source": report.source,
        "kind": report.kind,
        "context": report.context or None,
        "inputs": report.inputs or None,
        "counts": {s: report.count(s) for s in ("error", "warning", "info")},
        "findings": [
            {
                "id": f.id,
                "severity": f.severity,
                "module": f.where.module,
                "attribute": f.where.attribute,
                "function": f.where.function,
                "file": f.where.file,
                "line": f.where.line,
                "key": f.where.key,
                "message": f.message,
                "fix": f.fix,
                "detail": f.detail,
            }
            for f in report.findings
        ],
        "checks": list(report.checks),
        "notes": list(report.notes),
    }
