"""The parts of a torch.export program's JSON (models/<name>.json) that the .pt2 reader needs, at bounded cost.

The reader needs the graph signature (which state is a parameter or a buffer), the module call graph
(the module tree) and, from the graph's nodes, only each node's `nn_module_stack` (the modules'
classes) and how many nodes there are. The nodes are nearly all of the document: 300,000 of them are
a 194 MB JSON that json.loads turned into 1.2 GB of objects over 8 s of CPU (now refused from its
declared size: MAX_PROGRAM_BYTES). So every `"nodes": [...]`
array is cut out of the text before json.loads, by possessive patterns matched left to right (each byte
scanned a bounded number of times), and what is needed of it is read from its bytes: its top-level
commas counted, its `nn_module_stack` strings collected (each distinct one decoded once).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from modinspect.errors import CorruptFileError

MAX_PROGRAM_BYTES = (
    128 << 20
)  # models/<name>.json inflated (about 160,000 nodes); a real export's is tens of MB
MAX_NESTING = 64  # JSON arrays and objects inside a node array; a node's own are a dozen deep

_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_PLAIN = rb'[^"\[\]{}]++'


def _group(depth: int) -> bytes:
    """A JSON array or object, nested at most `depth` deep (brackets' kinds are not paired: json.loads checks)."""
    group = rb"(?!)"
    for _ in range(depth):
        group = rb"[\[{](?:" + _STRING + rb"|" + _PLAIN + rb"|" + group + rb")*+[\]}]"
    return group


_GROUP = _group(MAX_NESTING)
_NODES_KEY = re.compile(rb'"nodes"[ \t\r\n]*+:[ \t\r\n]*+(?=\[)')
_ARRAY = re.compile(_GROUP, re.S)
_INNER = re.compile(
    _STRING + rb"|" + _group(MAX_NESTING - 1), re.S
)  # what hides commas inside an element
_STACK = re.compile(rb'"nn_module_stack"[ \t\r\n]*+:[ \t\r\n]*+(' + _STRING + rb")", re.S)


@dataclass(frozen=True)
class NodeArray:
    """What the reader keeps of one `"nodes"` array: its length and its nodes' distinct module stacks."""

    count: int
    stacks: tuple[str, ...]


_NON_BLANK = re.compile(rb"[^ \t\r\n]")


def _read_array(inner: memoryview) -> NodeArray:
    """The NodeArray of an array's bytes between its brackets (a view: 100 MB are not copied)."""
    if _NON_BLANK.search(inner) is None:
        return NodeArray(0, ())
    count = _INNER.sub(b"", inner).count(b",") + 1
    stacks = []
    for text in dict.fromkeys(
        _STACK.findall(inner)
    ):  # the stack of each module path repeats on every node
        value = json.loads(text)
        if isinstance(value, str):
            stacks.append(value)
    return NodeArray(count, tuple(stacks))


def load_program(raw: bytes, where: str) -> tuple[dict[str, Any], list[NodeArray]]:
    """The program's JSON with each `"nodes"` array replaced by `[i]`, and the NodeArray i of each.

    An array nested past MAX_NESTING, or unbalanced, is a CorruptFileError; so is invalid JSON.
    """
    pieces: list[bytes] = []
    arrays: list[NodeArray] = []
    pos = 0
    while (key := _NODES_KEY.search(raw, pos)) is not None:
        array = _ARRAY.match(raw, key.end())
        if array is None:
            raise CorruptFileError(
                f"{where} is not valid JSON, or nests a node array more than {MAX_NESTING} deep"
            )
        pieces += [raw[pos : key.end()], b"[%d]" % len(arrays)]
        arrays.append(_read_array(memoryview(raw)[array.start() + 1 : array.end() - 1]))
        pos = array.end()
    pieces.append(raw[pos:])
    try:
        doc = json.loads(b"".join(pieces))
    except (ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{where} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{where} is not a JSON object")
    return doc, arrays


def graph_nodes(graph: object, arrays: list[NodeArray]) -> NodeArray:
    """The NodeArray a graph's `"nodes": [i]` stands for (an empty one when it has none)."""
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if (
        isinstance(nodes, list)
        and len(nodes) == 1
        and type(nodes[0]) is int
        and 0 <= nodes[0] < len(arrays)
    ):
        return arrays[nodes[0]]
    return NodeArray(0, ())
