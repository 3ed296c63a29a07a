"""Key mapping shared by diff and load: strip/add prefixes, regex renames, include/exclude globs."""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from modinspect.errors import UsageError

# Prefixes wrappers add: DataParallel/DDP, torch.compile, Lightning/HF containers.
WRAPPER_PREFIXES = {
    "module.": "DataParallel/DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "model.": "a wrapping module",
}


@dataclass(frozen=True)
class KeyMap:
    """How checkpoint keys are rewritten before they are matched. Applied in field order.

    Attributes:
        strip_prefixes: prefixes removed from a key, each tried in turn ("module." of a DDP checkpoint).
        add_prefix: a prefix put before every key.
        renames: (regular expression, replacement) pairs applied with re.sub, in order.
        include: globs: keep only the keys matching one (empty: keep all).
        exclude: globs: drop the keys matching one.
    """

    strip_prefixes: tuple[str, ...] = ()
    add_prefix: str = ""
    renames: tuple[tuple[str, str], ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def apply(self, name: str) -> str | None:
        """The mapped name, or None when include/exclude filter it out."""
        for prefix in self.strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        name = self.add_prefix + name
        for pattern, repl in self.renames:
            name = re.sub(pattern, repl, name)
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return None
        if any(fnmatch.fnmatchcase(name, g) for g in self.exclude):
            return None
        return name

    @property
    def rewrites(self) -> bool:
        """Whether any rule is set: without one, map_names maps every name to itself."""
        return bool(
            self.strip_prefixes or self.add_prefix or self.renames or self.include or self.exclude
        )

    def map_names(self, names: Iterable[str], side: str) -> dict[str, str]:
        """{mapped name: original name}; two originals mapping to one name is an error."""
        if not self.rewrites:
            names = list(names)
            identity = dict(zip(names, names, strict=True))  # no rule: each name maps to itself
            if len(identity) == len(names):
                return identity
        out: dict[str, str] = {}
        for original in names:
            mapped = self.apply(original)
            if mapped is None:
                continue
            if mapped in out:
                raise UsageError(
                    f"key mapping sends both {out[mapped]!r} and {original!r} in {side} to {mapped!r}; "
                    "narrow --rename or --strip-prefix"
                )
            out[mapped] = original
        return out


def parse_renames(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """'REGEX=REPL' strings -> compiled-checked pairs."""
    pairs = []
    for spec in specs:
        pattern, sep, repl = spec.partition("=")
        if not sep or not pattern:
            raise UsageError(
                f"--rename {spec!r} is not REGEX=REPLACEMENT, e.g. '^encoder\\.=backbone.'"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--rename {spec!r}: {exc}") from None
        pairs.append((pattern, repl))
    return tuple(pairs)


def suggest_prefix(only_here: Sequence[str], there: Set[str]) -> tuple[str, int] | None:
    """A wrapper prefix that, stripped from most of `only_here`, would make them match `there`."""
    if not only_here:
        return None
    best: tuple[str, int] | None = None
    for prefix in WRAPPER_PREFIXES:
        hits = sum(1 for n in only_here if n.startswith(prefix) and n[len(prefix) :] in there)
        if hits * 2 >= len(only_here) and (best is None or hits > best[1]):
            best = (prefix, hits)
    return best


_INDEX = re.compile(r"[0-9]{1,18}")


def is_index(part: str) -> bool:
    """A layer index: ASCII digits that fit an int64 ('²' and 5,000-digit names are names, not indices)."""
    return _INDEX.fullmatch(part) is not None


# A whole dotted part that is_index: 1 to 18 ASCII digits between dots or the name's ends.
_INDEX_PART = re.compile(r"(?<![^.])[0-9]{1,18}(?![^.])")


def collapse_indices(names: Sequence[str]) -> list[str]:
    """['h.0.w', 'h.1.w', 'h.2.w', 'x'] -> ['h.{0-2}.w', 'x']: layer indices folded into ranges, order kept."""
    return [label for label, _ in collapse_groups(names)]


def collapse_groups(names: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """collapse_indices' labels, each with the names it stands for: [('h.{0-2}.w', ('h.0.w', 'h.1.w', 'h.2.w'))]."""
    # Linear: one C-level regex scan per name, groups in first-seen order as dicts keep it (200k names: 0.3 s).
    groups: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    for name in names:
        hits = _INDEX_PART.findall(name)
        if len(hits) != 1:
            key: tuple[str, ...] = ("", name)
            groups.setdefault(key, []).append((0, name))
        else:
            found = _INDEX_PART.search(name)
            assert found is not None
            key = (name[: max(found.start() - 1, 0)], name[found.end() + 1 :])
            groups.setdefault(key, []).append((int(hits[0]), name))
    out: list[tuple[str, tuple[str, ...]]] = []
    for key, members in groups.items():
        if len(members) < 3:
            out.extend((name, (name,)) for _, name in members)
        else:
            head, tail = key
            ranges = format_ranges(sorted(i for i, _ in members))
            out.append(
                (
                    f"{head}.{{{ranges}}}" + (f".{tail}" if tail else ""),
                    tuple(name for _, name in members),
                )
            )
    return out


def format_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# A whole dotted part that is a layer index, with another part after it.
_FIRST_INDEX_PART = re.compile(r"(?:^|\.)[0-9]{1,18}(?=\.)")


def rollup_key(name: str) -> str:
    """The module a tensor is rolled up under: up to its first layer index ('transformer.h.3'), else its top module."""
    found = _FIRST_INDEX_PART.search(name)
    if found is not None:
        return name[: found.end()]
    return name.partition(".")[0] if "." in name else ""


def rollup_keys(names: Iterable[str]) -> list[str]:
    """`rollup_key` of each name, the regex skipped for a name that starts with the last index key and a dot.

    Such a name has that key too: its first index part lies in the prefix it shares with the name that gave
    the key (the part ends at the dot), and nothing before it in that prefix was one. 'h.1' is no prefix
    of 'h.12.w' here: the dot is part of what is compared.
    """
    out: list[str] = []
    append, search = out.append, _FIRST_INDEX_PART.search
    last, last_dotted = "", ""  # "": no index key yet
    for name in names:
        if last_dotted and name.startswith(last_dotted):
            append(last)
            continue
        found = search(name)
        if found is not None:
            last = name[: found.end()]
            last_dotted = last + "."
            append(last)
        else:
            append(name.partition(".")[0] if "." in name else "")
    return out


def short_path(path: str) -> str:
    """`path` relative to the working directory when it is under it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def collapse_names(names: Sequence[str]) -> list[str]:
    """Module names that differ only in their last layer index folded into one: `{3-25 odd}`, `h.{0-11}.mlp`.

    Order of first appearance is kept; fewer than three members are listed as they are.
    """
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        key = name_family(name)
        groups.setdefault(key[0] if key else "\0" + name, []).append((key[1] if key else 0, name))
    out: list[str] = []
    done: set[str] = set()
    for name in names:
        key = name_family(name)
        group = key[0] if key else "\0" + name
        members = groups[group]
        if group.startswith("\0") or len(members) < 3:
            out.append(name or "(model)")
        elif group not in done:
            done.add(group)
            indices = sorted(dict.fromkeys(i for i, _ in members))
            out.append(group.replace("*", "{" + _index_ranges(indices) + "}", 1))
    return out


def name_family(name: str) -> tuple[str, int] | None:
    """(name with its last numeric component as '*', that index): `h.3.mlp` -> ('h.*.mlp', 3)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isascii() and parts[i].isdigit() and len(parts[i]) < 10:
            return ".".join([*parts[:i], "*", *parts[i + 1 :]]), int(parts[i])
    return None


def _index_ranges(indices: list[int]) -> str:
    """[3, 5, ..., 25] -> '3-25 odd'; [0, 1, 2] -> '0-2'; otherwise consecutive spans joined by commas."""
    if len(indices) >= 3:
        steps = {b - a for a, b in itertools.pairwise(indices)}
        if steps == {2}:
            return f"{indices[0]}-{indices[-1]} {'odd' if indices[0] % 2 else 'even'}"
    return format_ranges(indices)
