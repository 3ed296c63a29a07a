"""Reports -> the stable JSON documents users script against. Field names are API: keep them."""

from __future__ import annotations

import json
from typing import Any

from modinspect import __version__
from modinspect.report import TreeReport

SCHEMA_VERSION = 1


def tree_document(report: TreeReport) -> dict[str, Any]:
    t = report.totals
    return {
        "schema_version": SCHEMA_VERSION,
        "modinspect_version": __version__,
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
        "by_dtype": [{"dtype": d.dtype, "elements": d.elements, "bytes": d.bytes} for d in report.by_dtype],
        "modules": [
            {"name": m.name, "type": m.type, "params": m.params, "bytes": m.bytes, "trainable": m.trainable,
             "training": m.training}
            for m in report.modules
        ],
        "tensors": [
            {"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "kind": r.kind, "bytes": r.nbytes,
             "requires_grad": r.requires_grad, "persistent": r.persistent, "alias_of": r.alias_of}
            for r in report.tensors
        ],
        "tied": [list(g) for g in report.tied],
        "other_entries": [{"name": n, "summary": s} for n, s in report.other_entries],
        "metadata": dict(report.metadata),
        "notes": list(report.notes),
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)
