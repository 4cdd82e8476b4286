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


def locate(root: Node, parts: KeyPath) -> tuple[int, int, str]:
    """(line, depth, file): the line of the deepest node along `parts` that exists, how many parts matched,
    and the file that node was read from (a space's `base:` may hold nodes of the file it names in
    `base_from`)."""
    node, line = root, root.start_mark.line + 1
    for depth, part in enumerate(parts):
        found = _child(node, part)
        if found is None:
            return line, depth, node.start_mark.name
        node, line = found
    return line, len(parts), node.start_mark.name


@dataclass
class Document:
    """The composed file, for turning a key path into a SpaceError at the right file and line."""

    source: str
    root: Node

    def error(self, parts: KeyPath, message: str, key: str | None = None) -> SpaceError:
        """A SpaceError at the line of `parts`; `key` defaults to the dotted form of `parts`."""
        line, _, source = locate(self.root, parts)
        return SpaceError(message, dotted(parts) if key is None else key, line, source)

    def with_base_of(self, parent: Document) -> Document:
        """This file's tree with `parent`'s `base:` entries in front of its own (its own keys win), so that
        an inherited key is still reported at its line in the parent's file."""
        own = _child(self.root, "base")
        inherited = _child(parent.root, "base")
        if inherited is None or not isinstance(inherited[0], MappingNode):
            return self
        if own is not None and not isinstance(own[0], MappingNode):
            return self  # the schema refuses a `base:` that is not a mapping, at this file's line
        own_pairs = own[0].value if own is not None else []
        overridden = {key.value for key, _ in own_pairs if isinstance(key, ScalarNode)}
        pairs = [(key, value) for key, value in inherited[0].value if key.value not in overridden]
        template = own[0] if own is not None else inherited[0]
        base = MappingNode(template.tag, pairs + own_pairs, template.start_mark, template.end_mark)
        root_pairs = [(key, value) for key, value in self.root.value if key.value != "base"]
        base_key = next((key for key, _ in self.root.value if key.value == "base"), None)
        if base_key is None:
            base_key = next(key for key, _ in parent.root.value if key.value == "base")
        root = MappingNode(
            self.root.tag, [*root_pairs, (base_key, base)], self.root.start_mark, self.root.end_mark
        )
        return Document(self.source, root)


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
    loader.name = source  # every node's mark names its file: `base_from` mixes nodes of two files
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
