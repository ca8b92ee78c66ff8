"""Load YAML keeping the line of every key and item, and expand ``${VAR}`` from the environment.

PyYAML's ``safe_load`` forgets where values came from and silently keeps the last of two equal
keys; a plan error must name its line, and a duplicated key is a mistake, so the node tree is
converted here by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import secrets
from .errors import PlanError, PlanProblem

Loc = tuple[str | int, ...]

# ${NAME} or ${NAME:-default}; $${NAME} stays literal as ${NAME}. This scans YAML strings, not SQL.
_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Located:
    """A YAML document as plain Python data, with the line of every key path."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest located ancestor."""
        for cut in range(len(loc), -1, -1):
            line = self.lines.get(loc[:cut])
            if line is not None:
                return line
        return None


def format_loc(loc: Loc) -> str:
    """Render a key path as ``steps[3].lock_timeout``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def load(text: str, filename: str, env: Mapping[str, str]) -> Located:
    """Parse ``text`` into data with lines, expanding ``${VAR}`` in every string.

    :raises PlanError: on a YAML syntax error, a duplicate or non-string key, an anchor/alias
        loop, or a variable missing from ``env`` (all problems at once, each with its line).
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        at = text.count("\n", 0, exc.position) + 1
        raise PlanError.single(filename, at, "", f"invalid YAML: character {exc.character!r} is not allowed"
                               ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = f"invalid YAML: {exc.problem or exc}" + (f" ({exc.context})" if exc.context else "")
        raise PlanError.single(filename, line, "", problem) from None
    except yaml.YAMLError as exc:
        raise PlanError.single(filename, None, "", f"invalid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise PlanError.single(filename, 1, "", "the file is empty; a plan is a YAML mapping")
    converter = _Converter(filename, env, loader)
    data = converter.convert(node, ())
    if converter.problems:
        raise PlanError(converter.problems)
    return Located(data, converter.lines)


class _Converter:
    def __init__(self, filename: str, env: Mapping[str, str], loader: yaml.SafeLoader) -> None:
        self.filename = filename
        self.env = env
        self.loader = loader
        self.lines: dict[Loc, int] = {}
        self.problems: list[PlanProblem] = []

    def problem(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self.problems.append(PlanProblem(self.filename, node.start_mark.line + 1, format_loc(loc), message))

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        value = self._construct(node, loc)
        if isinstance(value, str):
            return self._expand(value, node, loc)
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        # Merge keys (<<) are flattened first; a key written in this mapping overrides a merged one
        # (that is what << is for), but the same key written twice here is a mistake.
        explicit = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        merged: set[str] = set()
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if not isinstance(key, str):
                self.problem(key_node, loc, f"keys must be strings, got {_yaml_type(key_node, key)}")
                continue
            if id(key_node) not in explicit:
                merged.add(key)
            elif key in out and key not in merged:
                self.problem(key_node, (*loc, key), "duplicate key (YAML would silently keep only the last)")
                continue
            else:
                merged.discard(key)
            self.lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = self.convert(value_node, (*loc, key))
            self.lines[(*loc, key)] = key_node.start_mark.line + 1
        return out

    def _key(self, node: yaml.Node) -> Any:
        """A key's value; YAML 1.1 reads ``on``/``yes``/``off`` as booleans, but in a plan they are names."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        if node.tag == "tag:yaml.org,2002:bool":
            return node.value
        return self._construct(node, None)

    def _construct(self, node: yaml.ScalarNode, loc: Loc | None) -> Any:
        """A scalar's value; a tag the safe loader does not know (``!foo``), or a value its tag cannot
        read (``!!int abc``), is a problem at its line, not an exception."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            message = f"invalid YAML: {exc.problem or exc}"
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            message = f"invalid YAML: {node.tag} value {node.value!r}: {exc}"
        self.problem(node, loc or (), message)
        return None

    def _expand(self, value: str, node: yaml.Node, loc: Loc) -> str:
        def substitute(match: re.Match[str]) -> str:
            escaped, name, default = match.group(1), match.group(2), match.group(3)
            if escaped:
                return match.group(0)[1:]
            if name in self.env:
                result = self.env[name]
            elif default is not None:
                result = default
            else:
                self.problem(node, loc, f"environment variable ${{{name}}} is not set")
                return ""
            secrets.register_env(name, result)
            return result

        return _VAR.sub(substitute, value)


def _yaml_type(node: yaml.Node, value: Any) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return type(value).__name__
