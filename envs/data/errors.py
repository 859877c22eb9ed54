"""The one error of the data readers: an input file that cannot be read as documented.

Contract: every reader in ``envs.data`` raises :class:`DataError` (a ``ValueError``, defined in
``envs.errors`` with the project's other errors) for bad input data (a missing file or column,
a directory where a file is expected, text that is not in the expected encoding, a malformed
file, an unreadable or invalid value, a size above a limit of ``envs.limits``), never for bad
arguments, which raise ``ConfigError`` (also a ``ValueError``). The message starts with where
the problem is, ``file, line N, field F: problem`` (``row N`` for Parquet; a part that is not
known is left out), so a user can find and fix the input; errors built with :meth:`DataError.at`
also keep the parts as ``path``, ``line`` and ``field`` (None when not known) for code that
handles them. Values quoted in a message are cut (``envs.errors.cut``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from envs.errors import ConfigError, DataError, cut

__all__ = ["DataError", "decode_text", "file_text", "require_file"]


def require_file(path) -> Path:
    """``path`` as a Path when it names an existing file, else DataError saying what it is."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist", path=path)
    if not path.is_file():
        raise DataError(f"{path}: is a directory, expected a file" if path.is_dir()
                        else f"{path}: is not a regular file", path=path)
    return path


def file_text(path, encoding: str = "utf-8-sig") -> str:
    """The text of a plain or gzip-compressed file (told apart by its first bytes), or DataError."""
    path = require_file(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError.at(path, None, None, f"is not a valid gzip file ({err})") from None
    return decode_text(data, path, encoding)


def decode_text(data: bytes, path, encoding: str) -> str:
    """``data`` decoded, or DataError naming the line of the first byte that is not ``encoding``."""
    try:
        return data.decode(encoding)
    except LookupError:
        raise ConfigError(f"encoding {cut(encoding)} is not a known text encoding (e.g. 'utf-8', "
                          "'latin-1')") from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError.at(path, line, None, f"is not {encoding} text ({err.reason})") from None
