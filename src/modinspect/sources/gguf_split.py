"""GGUF models split into several files, as llama.cpp's gguf-split (and gguf-py's GGUFWriter with
`split_max_tensors` / `split_max_size`) writes them: `<prefix>-00001-of-00003.gguf` and so on.

Every part is a whole GGUF file with its own header and its own tensors. The parts say what they are in
three keys: `split.no` (uint16, counted from 0), `split.count` (uint16) and `split.tensors.count` (int32, all
the parts' tensors together); the first part also holds the model's metadata, the others only those
three keys. The parts find each other by name alone, as llama.cpp's loader finds them (llama_split_path:
`%s-%05d-of-%05d.gguf`): opening any part opens them all, and they must agree with each other and with
their names before anything is listed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modinspect.errors import CorruptFileError
from modinspect.sources.gguf import MAGIC, MAX_TENSORS, VERSIONS, GGUFHeader, GGUFSource

__all__ = ["MAX_PARTS", "open_gguf", "part_name"]

NO, COUNT, TENSORS = "split.no", "split.count", "split.tensors.count"
# llama.cpp's split.count is a uint16 (65,535 parts), but a real split has tens of parts, and at most one per
# tensor (a 671B MoE has about 1,100): past this many, a set of tiny hostile files would take seconds to open.
MAX_PARTS = 1 << 14
SPLIT_NAME = re.compile(r"(?P<prefix>.*)-(?P<no>[0-9]{5,})-of-(?P<count>[0-9]{5,})\.gguf", re.S)
# Keys a part may hold with a value of its own: the file's own version, alignment and place in the split.
PER_FILE = frozenset({"GGUF.version", "general.alignment", NO})


def part_name(prefix: str, no: int, count: int) -> str:
    """The file name of part `no` (from 1) of `count`, as llama.cpp's llama_split_path writes it."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def open_gguf(path: Path, label: str) -> GGUFSource:
    """The GGUF model `path` is, or is part of: one file, or every part of its split, checked."""
    header = GGUFHeader(path, label)
    place = _place(header)
    if place is None:
        return GGUFSource(path, label, parts=[header])
    no, count = place
    named = SPLIT_NAME.fullmatch(path.name)
    if named is None:  # renamed: the other parts cannot be found the way llama.cpp finds them
        return GGUFSource(
            path,
            label,
            parts=[header],
            notes=[
                f"part {no + 1} of a GGUF split into {count} files, but not named "
                f"*-{no + 1:05d}-of-{count:05d}.gguf as the parts must be: only this file's tensors "
                "are listed"
            ],
        )
    if (int(named["no"]), int(named["count"])) != (no + 1, count):
        raise CorruptFileError(
            f"{label} is named part {int(named['no']):,} of {int(named['count']):,}, but its header says "
            f"part {no + 1:,} of {count:,} ({NO} {no}, {COUNT} {count})"
        )
    parts = _open_parts(path, label, header, named["prefix"], count)
    return _joined(path, label, parts)


def _place(header: GGUFHeader) -> tuple[int, int] | None:
    """(split.no, split.count) of a part of a split, None for a file that is not one (no split.count, or
    the 0 gguf-split's merge leaves, or 1)."""
    meta, corrupt = header.metadata, header.corrupt
    raw = meta.get(COUNT)
    if raw is None:
        return None
    if not raw.isdecimal() or not raw.isascii():
        raise corrupt(f"gives {COUNT} the value {raw[:40]!r}, not a number of files")
    count = int(raw)
    if count <= 1:
        return None
    if count > MAX_PARTS:
        raise corrupt(
            f"declares a split into {count:,} files ({COUNT}); modinspect opens at most {MAX_PARTS:,} "
            "parts"
        )
    raw_no = meta.get(NO)
    if raw_no is None:
        raise corrupt(f"declares a split into {count:,} files but has no {NO} saying which it is")
    if not raw_no.isdecimal() or not raw_no.isascii() or int(raw_no) >= count:
        raise corrupt(
            f"gives {NO} the value {raw_no[:40]!r}, not a part of its {count:,} (0 to {count - 1:,})"
        )
    return int(raw_no), count


def _part_label(label: str, path: Path, name: str) -> str:
    """Part `name` as the user would write it: beside `label` where the label ends in the file's name."""
    return label[: -len(path.name)] + name if label.endswith(path.name) else name


def _open_parts(
    path: Path, label: str, header: GGUFHeader, prefix: str, count: int
) -> list[GGUFHeader]:
    """Every part's header in order, `header` (the part opened) among them, each checked as it is read.

    A part after the first keeps only its split keys once checked: the model's metadata is the first part's,
    and a set of many parts each holding megabytes of text does not pile it all up.
    """
    no = int(header.metadata[NO])
    paths = [path.with_name(part_name(prefix, i + 1, count)) for i in range(count)]
    declared = len(header.entries)
    for i, p in enumerate(
        paths
    ):  # all there, and not too many tensors in all, before any is parsed
        if i == no:
            continue
        if not p.is_file():
            why = "a link that leads nowhere" if p.is_symlink() else "missing"
            raise CorruptFileError(
                f"{label} is part {no + 1:,} of a GGUF split into {count:,} files, but part {i + 1:,} "
                f"({_part_label(label, path, p.name)}) is {why}"
            )
        declared += _tensor_count(p)
        if declared > MAX_TENSORS:
            raise CorruptFileError(
                f"{label}'s split declares more than {MAX_TENSORS:,} tensors in all (by part {i + 1:,})"
            )
    parts: list[GGUFHeader] = []
    seen: dict[tuple[int, int], int] = {}
    owner: dict[str, GGUFHeader] = {}
    for i, p in enumerate(paths):
        part_label = _part_label(label, path, p.name)
        h = header if i == no else GGUFHeader(p, part_label)
        st = os.stat(p)
        twin = seen.setdefault((st.st_dev, st.st_ino), i)
        if twin != i:
            raise CorruptFileError(
                f"{part_label} is the same file as part {twin + 1:,} of the split "
                f"({_part_label(label, path, paths[twin].name)}): a link, not a part of its own"
            )
        if i != no:
            _check_part(h, i, count)
        if i:
            _check_agrees(h, parts[0])
            h.metadata = {k: v for k, v in h.metadata.items() if k in (NO, COUNT, TENSORS)}
        for name in h.entries:
            other = owner.setdefault(name, h)
            if other is not h:
                raise CorruptFileError(
                    f"{h.label} holds the tensor {name!r}, which {other.label} holds too"
                )
        if len(owner) > MAX_TENSORS:
            raise CorruptFileError(
                f"{label}'s split holds more than {MAX_TENSORS:,} tensors in its first {i + 1:,} parts"
            )
        parts.append(h)
    return parts


def _tensor_count(path: Path) -> int:
    """The tensor count a GGUF file's first 24 bytes declare (0 when they are not a little-endian GGUF
    header of a version read here: the full parse says what is wrong)."""
    with path.open("rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != MAGIC or int.from_bytes(head[4:8], "little") not in VERSIONS:
        return 0
    return int.from_bytes(head[8:16], "little")


def _check_part(h: GGUFHeader, i: int, count: int) -> None:
    """Part i (from 0) says it is part i of `count`."""
    place = _place(h)
    if place != (i, count):
        said = (
            "it is not part of a split"
            if place is None
            else f"it is part {place[0] + 1:,} of {place[1]:,}"
        )
        raise CorruptFileError(
            f"{h.label} is named part {i + 1:,} of {count:,}, but its header says {said}"
        )


def _check_agrees(h: GGUFHeader, first: GGUFHeader) -> None:
    """A later part holds no metadata key with another value than the first part's (its own version,
    alignment and split.no aside)."""
    for key, value in h.metadata.items():
        if key not in PER_FILE and first.metadata.get(key, value) != value:
            raise CorruptFileError(
                f"{h.label} disagrees with {first.label} on {key}: "
                f"{value[:60]!r} against {first.metadata[key][:60]!r}"
            )


def _joined(path: Path, label: str, parts: list[GGUFHeader]) -> GGUFSource:
    """One source over the checked parts, once they hold the tensor count they declare."""
    first = parts[0]
    total = sum(len(h.entries) for h in parts)
    declared = next((h.metadata[TENSORS] for h in parts if TENSORS in h.metadata), None)
    if declared is not None and declared != str(total):
        raise CorruptFileError(
            f"{label}'s split declares {declared[:40]} tensors ({TENSORS}), but its "
            f"{len(parts):,} files hold {total:,}"
        )
    metadata = {k: v for k, v in first.metadata.items() if k != NO}
    names = f"{parts[0].path.name} to {parts[-1].path.name}"
    note = f"one model in {len(parts):,} GGUF files ({names}): all their tensors are listed"
    return GGUFSource(first.path, label, parts=parts, metadata=metadata, notes=[note])
