"""Reading a space file with its lines: PyYAML's node tree, kept so that any error names the line.

PyYAML composes the text into a node tree (safe loader only; node tags outside plain YAML are refused, and
duplicated mapping keys are caught here because PyYAML would silently keep the last one). `Document` then
turns a key path into a `SpaceError` at the line that holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

KeyPath = tuple[str | int, ...]  # a path into the YAML tree: mapping keys and sequence indices


# -- errors -------------------------------------------------------------------------------------------------
class SpaceError(Exception):
    """A space file is unreadable or invalid. `key` is the dotted YAML key ("" for the whole document),
    `line` the 1-based line in the file (or None), and `str()` one line: `file:line: key: message`."""

    def __init__(self, message: str, key: str = "", line: int | None = None, source: str = ""):
        self.message = " ".join(str(message).split())  # one line, whatever the underlying library wrote
        self.key = key
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ": ".join(part for part in (where, self.key, self.message) if part)


def dotted(parts: KeyPath) -> str:
    """`("cells", 1, "model.ctc_layers")` -> `cells[1].model.ctc_layers`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _child(node: Node, part: str | int) -> tuple[Node, int] | None:
    """The child of `node` at `part`, with the line that names it (the key's line in a mapping)."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                return value_node, key_node.start_mark.line + 1
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None


def locate(root: Node, parts: KeyPath) -> tuple[int, int]:
    """(line, depth): the line of the deepest node along `parts` that exists, and how many parts matched."""
    node, line = root, root.start_mark.line + 1
    for depth, part in enumerate(parts):
        found = _child(node, part)
        if found is None:
            return line, depth
        node, line = found
    return line, len(parts)


@dataclass
class Document:
    """The composed file, for turning a key path into a SpaceError at the right line."""

    source: str
    root: Node

    def error(self, parts: KeyPath, message: str, key: str | None = None) -> SpaceError:
        """A SpaceError at the line of `parts`; `key` defaults to the dotted form of `parts`."""
        line = locate(self.root, parts)[0]
        return SpaceError(message, dotted(parts) if key is None else key, line, self.source)


# -- reading YAML safely ------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading `1e-4` as a float (YAML 1.1 insists on `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Only tags the safe constructor knows (str, int, float, bool, null, seq, map, ...): no python/* or custom tag
# gets near a constructor, and the error names the key instead of PyYAML's internals.
_SAFE_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag} | {_MERGE_TAG}


def read_text(path: Path) -> str:
    """The file as text; SpaceError if it is missing or not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpaceError(f"cannot read the file ({exc.strerror or exc})", source=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpaceError("the file is not UTF-8 text", line=line, source=str(path)) from None


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> SpaceError:
    """A PyYAML error as a SpaceError at the line where PyYAML noticed the problem."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    if line is None and isinstance(getattr(exc, "position", None), int):  # reader errors: a character offset
        line = text[: exc.position].count("\n") + 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return SpaceError(
        f"invalid YAML: {problem}" + (f" ({context})" if context else ""), line=line, source=source
    )


def _check_nodes(doc: Document, node: Node, parts: KeyPath, seen: set[int]) -> None:
    """Refuse non-plain tags and duplicated mapping keys anywhere under `node`."""
    if id(node) in seen:  # an alias of a node already checked; also ends a walk through recursive anchors
        return
    seen.add(id(node))
    if node.tag not in _SAFE_TAGS:
        message = f"the tag {node.tag!r} is not allowed (plain YAML values only)"
        raise SpaceError(message, dotted(parts), node.start_mark.line + 1, doc.source)
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(doc, item, (*parts, index), seen)
    elif isinstance(node, MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            _check_nodes(doc, key_node, parts, seen)
            name = key_node.value if isinstance(key_node, ScalarNode) else None
            line = key_node.start_mark.line + 1
            if name is not None and key_node.tag != _MERGE_TAG:
                ident = (key_node.tag, name)
                if ident in first_line:
                    message = f"duplicated key (first given on line {first_line[ident]})"
                    raise SpaceError(message, dotted((*parts, name)), line, doc.source)
                first_line[ident] = line
            _check_nodes(doc, value_node, (*parts, name) if name is not None else parts, seen)


def parse(text: str, source: str) -> tuple[Document, dict[str, Any]]:
    """The composed document and its data (a mapping), or SpaceError for anything that is not one."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise SpaceError(
                "the file is empty (expected a mapping of keys, e.g. `name: ...`)", "", 1, source
            )
        doc = Document(source, root)
        _check_nodes(doc, root, (), set())
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise doc.error((), f"the file must be a mapping of keys (`name: ...`), not {kind}")
        return doc, loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    except RecursionError:
        raise SpaceError("the file is nested too deeply", source=source) from None
    finally:
        loader.dispose()
