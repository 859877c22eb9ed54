"""YAML reading that fails fast and clearly: bounded size and alias expansion, no duplicate keys.

``load_yaml`` reads a file (or text) with PyYAML's safe loader, and raises
:class:`~envs.errors.ConfigError` naming the file (and line) when the file is missing, a
directory, not UTF-8, larger than the ``yaml_bytes`` limit, not valid YAML, nested too deeply,
repeats a key in a mapping (``<<`` merges excepted), or would expand through its aliases to
more values than the ``yaml_nodes`` limit (an "alias bomb": a kilobyte that expands to
billions of values). Limits: ``envs.limits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from envs.errors import ConfigError, cut, cut_text
from envs.limits import above

_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    origin = "<text>"

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            problem = above("yaml_nodes", _expanded_size(node, self.origin),
                            "with aliases expanded, the document's value count")
            if problem is not None:
                raise ConfigError(f"{self.origin}: {problem}")
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the constructor below names it
                if first is not None:
                    raise ConfigError(f"{self.origin}, line {line}: key {cut(key)} repeats the key of "
                                      f"line {first} in the same mapping")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root, origin: str) -> int:
    """Values of the node graph with every alias expanded, counted without expanding it."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if ready:
            children = _children(node)
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            open_ids.discard(id(node))
        elif id(node) in sizes:
            continue
        elif isinstance(node, ScalarNode):
            sizes[id(node)] = 1
        elif id(node) in open_ids:
            raise ConfigError(f"{origin}, line {node.start_mark.line + 1}: a YAML alias refers to a value "
                              "that contains it (a recursive alias)")
        else:
            open_ids.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
    return sizes[id(root)]


def _children(node) -> list:
    if isinstance(node, MappingNode):
        return [c for pair in node.value for c in pair]
    return list(node.value) if isinstance(node, SequenceNode) else []


def load_yaml(source: str | Path, *, text: str | None = None, origin: str | None = None) -> Any:
    """The value of the YAML file ``source`` (or of ``text``, reported as ``origin``)."""
    origin = str(origin or source)
    if text is None:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{origin}: file does not exist")
        if path.is_dir():
            raise ConfigError(f"{origin}: is a directory, expected a YAML file")
        problem = above("yaml_bytes", path.stat().st_size, "file size (bytes)")
        if problem is not None:
            raise ConfigError(f"{origin}: {problem}")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise ConfigError(f"{origin}, line {line}: is not UTF-8 text ({err.reason})") from None
    loader = _Loader(text)
    loader.origin = origin
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = "" if mark is None else f", line {mark.line + 1}"
        raise ConfigError(f"{origin}{where}: invalid YAML: {cut_text(err)}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply to read") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{origin}: invalid YAML: {cut_text(err)}") from None
    finally:
        loader.dispose()
