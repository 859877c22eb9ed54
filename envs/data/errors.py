"""The one error of the data readers: an input file that cannot be read as documented.

Contract: every reader in ``envs.data`` raises :class:`DataError` (a ``ValueError``) for bad
input data (a missing file or column, a malformed file, an unreadable or invalid value), never
for bad arguments, which stay plain ``ValueError``. The message starts with where the problem
is, ``file, line N, field F: problem`` (``row N`` for Parquet; a part that is not known is left
out), so a user can find and fix the input; errors built with :meth:`DataError.at` also keep
the parts as ``path``, ``line`` and ``field`` (None when not known) for code that handles them.
"""

from __future__ import annotations


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
