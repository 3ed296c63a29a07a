"""A doctor report as SARIF 2.1.0, the format code-scanning tools (GitHub, GitLab, VS Code) read.

One run, one rule per check of the catalogue (its summary, story and fix), one result per finding. A finding
with a source line points at it (physicalLocation); every finding names its module path, attribute or
Function as a logicalLocation; a checkpoint's findings point at the checkpoint file.
"""

from __future__ import annotations

from typing import Any

from modinspect.reports.doctor import CATALOG, DoctorReport, Finding
from modinspect.version import __version__

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _rule(check_id: str) -> dict[str, Any]:
    check = CATALOG[check_id]
    return {
        "id": check.id,
        "name": "".join(part.capitalize() for part in check.id.split("-")),
        "shortDescription": {"text": check.summary},
        "fullDescription": {"text": check.story},
        "help": {"text": f"Fix: {check.fix}"},
        "properties": {"scope": check.scope},
    }


def _location(f: Finding, report: DoctorReport) -> dict[str, Any]:
    where = f.where
    kind = "function" if where.function else ("member" if where.attribute else "module")
    name = where.key or "<root>"
    if where.function:
        name = f"{name}:{where.function}"
    location: dict[str, Any] = {"logicalLocations": [{"fullyQualifiedName": name, "kind": kind}]}
    uri = where.file or (report.source if report.kind == "checkpoint" else None)
    if uri:
        physical: dict[str, Any] = {"artifactLocation": {"uri": uri.replace("\\", "/")}}
        if where.line:
            physical["region"] = {"startLine": where.line}
        location["physicalLocation"] = physical
    return location


def sarif_document(report: DoctorReport) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one doctor run."""
    rules = list(dict.fromkeys([*report.checks, *(f.id for f in report.findings)]))
    index = {r: i for i, r in enumerate(rules)}
    results = [
        {
            "ruleId": f.id,
            "ruleIndex": index[f.id],
            "level": LEVEL[f.severity],
            "message": {
                "text": f"{f.message}. Fix: {f.fix}."
                if not f.message.endswith(".")
                else f"{f.message} Fix: {f.fix}."
            },
            "locations": [_location(f, report)],
        }
        for f in report.findings
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "modinspect doctor",
                        "version": __version__,
                        "rules": [_rule(r) for r in rules],
                    }
                },
                "results": results,
                "properties": {
                    "source": report.source,
                    "kind": report.kind,
                    "context": report.context,
                    "inputs": report.inputs,
                    "notes": list(report.notes),
                },
            }
        ],
    }
