"""The class declarations in a TorchScript archive's code/, read as text the way torch's lexer reads it.

`torch.jit.load` learns which attributes of a module are parameters and buffers from statements in
its class body (`__parameters__ = ["weight", "bias", ]`), so this is what the safe reader must
find, and only where torch finds it: not inside a string literal (a triple-quoted string may hold
a fake `class ...:` line), not inside brackets, not in a method body. The rules are those of
torch/csrc/jit/frontend/lexer.h: strings in one or three quotes of either kind with backslash
escapes (only a triple-quoted one holds a raw newline), `#` comments except `# type:`, newlines
inside brackets and after a backslash continue the line, indentation counted in blank characters.

Every pattern is possessive (no backtracking), and the text is matched from left to right, each
piece once: linear in the text's size whatever it holds (a backtracking pattern took 2.8 GB on
20 million escaped quotes). The text's size and the number of declarations are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modinspect.errors import CorruptFileError

MAX_CODE_BYTES = 16 << 20  # all of code/ inflated; a traced 12-layer BERT's is 0.12 MB
MAX_DECLARATIONS = (
    300_000  # classes, __parameters__/__buffers__ statements and their names in all of code/
)
MAX_NAME = (
    4096  # characters in one parameter or buffer name (a literal's, before escapes are decoded)
)
MAX_NESTING = 32  # brackets inside brackets; torch's own printer nests a handful

_B = r"[ \t\f\v\r]"  # torch's blank: whitespace but the newline
_STRING = (
    r'"""(?:[^"\\]++|\\.|"(?!""))*+"""'
    r"|'''(?:[^'\\]++|\\.|'(?!''))*+'''"
    r'|"(?:[^"\\\n]++|\\.)*+"'
    r"|'(?:[^'\\\n]++|\\.)*+'"
)
_COMMENT = r"\#(?! type:)[^\n]*+"
# One piece of a line: a run of plain characters, a string, a comment, a backslash continuation, or a
# lone backslash or '# type:' (torch lexes what follows those as tokens).
_ATOM = rf"[^\"'\#\\\n()\[\]{{}}]++|{_STRING}|{_COMMENT}|\\\n|\\|\#"


def _brackets(depth: int) -> str:
    """A bracketed group, newlines allowed inside, nested at most `depth` deep."""
    group = r"(?!)"
    for _ in range(depth):
        group = rf"[(\[{{](?:{_ATOM}|\n|{group})*+[)\]}}]"
    return group


_CONTENT = rf"(?:{_ATOM}|{_brackets(MAX_NESTING)})*+"  # a logical line, without its newline
_LINE = rf"{_CONTENT}\n"
_BLANK_LINE = rf"{_B}*+(?:{_COMMENT})?\n"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*+"
_HEADER = rf"class{_B}++({_NAME}){_B}*+\({_B}*+({_NAME}(?:\.{_NAME})*+){_B}*+\){_B}*+:{_B}*+(?:{_COMMENT})?\n"
_SLOT_NAME = r"__(?:parameters|buffers)__(?![A-Za-z0-9_])"

# Statements at the top level that are not a class with a base (functions, imports, bare classes),
# each with its indented body.
_TOP_SKIP = re.compile(
    rf"(?:{_BLANK_LINE}|(?![ \t\f\v\r\n]|{_HEADER}){_LINE}(?:{_BLANK_LINE}|{_B}++{_LINE})*+)*+",
    re.S,
)
_CLASS = re.compile(rf"{_HEADER}(?:{_BLANK_LINE})*+({_B}*+)", re.S)
# Class-body lines up to the next that starts with __parameters__ or __buffers__ (at any indentation).
_BODY_SKIP = re.compile(rf"(?:{_BLANK_LINE}|{_B}++(?!{_SLOT_NAME}){_LINE})*+", re.S)
_GAP = rf"(?:{_B}|\\\n)*+"  # blanks and backslash continuations
_SLOT = re.compile(
    rf"({_B}++)__(parameters|buffers)__{_GAP}(?::[^=\n]*+)?={_GAP}({_CONTENT})\n", re.S
)
_LIST_SPACE = rf"(?:{_B}|\n|\\\n|{_COMMENT})*+"
_STRINGS = rf"(?:(?:{_STRING}){_LIST_SPACE})++"  # adjacent literals, which torch concatenates
_LIST = re.compile(
    rf"\[{_LIST_SPACE}(?:{_STRINGS}(?:,{_LIST_SPACE}{_STRINGS})*+(?:,{_LIST_SPACE})?)?\]{_B}*+(?:{_COMMENT})?",
    re.S,
)
_LIST_TOKEN = re.compile(rf"({_STRING})|{_COMMENT}|(,)", re.S)
_ESCAPE = re.compile(r"\\([0-3][0-7]{2}|.)", re.S)
_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "\n": "\n",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "v": "\v",
    "t": "\t",
}


@dataclass(frozen=True)
class ScriptClass:
    """What code/ declares about one TorchScript class."""

    base: str
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


class _Budget:
    def __init__(self, label: str) -> None:
        self.label, self.left = label, MAX_DECLARATIONS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise CorruptFileError(
                f"{self.label} declares more than {MAX_DECLARATIONS:,} classes, parameter and buffer lists and "
                "names in its TorchScript code/"
            )


class _BadList(Exception):
    """A __parameters__/__buffers__ value torch would refuse; the caller says where."""


def _literal(token: str) -> str:
    """A string literal's value, escapes decoded as torch's parseStringLiteral does."""
    quotes = 3 if token[:3] in ('"""', "'''") and len(token) >= 6 else 1
    body = token[quotes:-quotes]
    if "\\" not in body:
        return body
    pieces = _ESCAPE.split(body)
    for i in range(1, len(pieces), 2):
        code = pieces[i]
        if len(code) == 3:
            pieces[i] = chr(int(code, 8))
        elif code in _ESCAPES:
            pieces[i] = _ESCAPES[code]
        else:
            escape = "\\" + code
            raise _BadList(f"a name with the escape {escape!r}, which torch does not accept")
    return "".join(pieces)


def _names(value: str, budget: _Budget) -> list[str]:
    """The names of a `["a", "b", ]` list; adjacent literals are one name, as in torch."""
    if _LIST.fullmatch(value) is None:
        raise _BadList("a value that is not a list of strings")
    names: list[str] = []
    current: list[str] = []
    for token in _LIST_TOKEN.finditer(value):
        literal, comma = token.group(1, 2)
        if literal is not None:
            if len(literal) > MAX_NAME + 6:
                raise _BadList(f"a name longer than {MAX_NAME:,} characters")
            current.append(_literal(literal))
        elif comma is not None and current:
            budget.spend()
            names.append("".join(current))
            current = []
    if current:
        budget.spend()
        names.append("".join(current))
    return names


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where `pattern`, which matches the empty string too, stops from `pos`."""
    found = pattern.match(text, pos)
    assert found is not None
    return found.end()


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parse_module(
    module: str, text: str, where: str, budget: _Budget, classes: dict[str, ScriptClass]
) -> None:
    text += "\n"  # every line ends in a newline
    pos, end = 0, len(text)
    while True:
        pos = _skip(_TOP_SKIP, text, pos)
        if pos >= end:
            return
        header = _CLASS.match(text, pos)
        if header is None:
            raise CorruptFileError(
                f"{where} line {_line_of(text, pos)} is not TorchScript this reader can parse (an unterminated "
                f"string, unbalanced brackets or brackets nested more than {MAX_NESTING} deep)"
            )
        budget.spend()
        name, base, indent = header.group(1, 2, 3)
        qualname = f"{module}.{name}"
        if qualname in classes:
            raise CorruptFileError(f"{where} declares the class {name} twice")
        slots: dict[str, dict[str, None]] = {"parameters": {}, "buffers": {}}
        pos = header.end() - len(indent)  # the body's first line, from its indentation
        while indent:
            pos = _skip(_BODY_SKIP, text, pos)
            slot = _SLOT.match(text, pos)
            if slot is None:
                break
            budget.spend()
            if len(slot[1]) == len(indent):  # torch compares indentation by its length
                try:  # torch adds every such statement's names to the class's set
                    slots[slot[2]].update(dict.fromkeys(_names(slot[3], budget)))
                except _BadList as exc:
                    raise CorruptFileError(
                        f"{where} line {_line_of(text, pos)} gives __{slot[2]}__ {exc}"
                    ) from None
            pos = slot.end()
        classes[qualname] = ScriptClass(base, tuple(slots["parameters"]), tuple(slots["buffers"]))


def parse_code(sources: dict[str, str], label: str = "the archive") -> dict[str, ScriptClass]:
    """Classes by qualified name (`__torch__.torch.nn.modules.conv.Conv2d`) from code/ texts by module."""
    classes: dict[str, ScriptClass] = {}
    budget = _Budget(label)
    for module, text in sources.items():
        where = f"{label}'s code/{module.replace('.', '/')}.py"
        _parse_module(module, text, where, budget, classes)
    return classes
