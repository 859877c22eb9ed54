"""The project's errors, all ``ValueError``s whose message says where the bad input is.

* :class:`ConfigError`: a configuration or argument that cannot be used (a site or scenario
  field, a script option, a time zone, a size above a limit); the message names the field.
* :class:`SiteError`: a ``ConfigError`` in a site description; the message names the site.
* :class:`DataError`: an input file that cannot be read as documented; the message names the
  file, line and field (``envs.data.errors`` holds its contract).

Messages never hold a whole input: values are shown through :func:`cut`.
"""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 2, 60, 40, 60
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxarray = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxfrozenset = _SHORT.maxdeque = 4


class ConfigError(ValueError):
    """A configuration value or argument that cannot be used; the message names the field."""


class SiteError(ConfigError):
    """Invalid site description; the message names the site and the offending field."""


class DataError(ValueError):
    """A data file that cannot be read as documented; the message names file, line and field."""

    def __init__(self, message: str, *, path=None, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line, self.field = line, field

    @classmethod
    def at(cls, path, line: int | None, field: str | None, problem: str, unit: str = "line") -> DataError:
        """``path, {unit} {line}, field {field}: {problem}``, the parts that are None left out.

        ``field`` is written as given (quote a column name with ``repr``).
        """
        where = str(path) + ("" if line is None else f", {unit} {line}") + ("" if field is None else
                                                                            f", field {field}")
        return cls(f"{where}: {problem}", path=path, line=line, field=field)


def cut(value, limit: int = 200) -> str:
    """``repr(value)`` short enough for an error message, whatever the size of ``value``.

    >>> len(cut("x" * 10**6))
    60
    >>> cut(list(range(100)))
    '[0, 1, 2, 3, ...]'
    """
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut_key(key) -> str:
    """A mapping key as a field name: a short text as it is, anything else through :func:`cut`."""
    return key if isinstance(key, str) and len(key) <= 60 else cut(key)


def cut_text(text: str, limit: int = 300) -> str:
    """``text`` (e.g. a parser's own message) cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
