"""A session file's raw columns, each row with the line it starts on: gzip or plain text, CSV,
Parquet and ACN JSON.

The readers in ``envs.data.sessions`` take their raw columns from here, and hand them with the
``SessionRows`` made here to ``envs.data.session_rows.assemble``. A file that cannot be read
(corrupt gzip, wrong encoding, malformed CSV or JSON, a missing column) raises ``DataError``
naming the file, the line and the field; a row with too few or too many fields is flagged in
its ``SessionRows``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError, file_text, require_file
from envs.data.session_rows import SessionRows
from envs.errors import cut_text

_SPACE = re.compile(r"\s*")


def read_text(path: Path, encoding: str) -> str:
    """The text of a plain or gzip-compressed file (told apart by its first bytes)."""
    return file_text(path, encoding)


def csv_columns(path: Path, columns: Mapping[str, str], sep: str, encoding: str):
    """Rows and raw text columns (canonical name -> Series of str) of a delimited text file."""
    reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""), delimiter=sep, strict=True)
    header, header_line, records, lines, last = None, 1, [], [], 0
    try:
        for record in reader:
            start, last = last + 1, reader.line_num
            if not any(value.strip() for value in record):
                continue
            if header is None:
                header, header_line = [value.strip() for value in record], start
            else:
                records.append(record)
                lines.append(start)
    except csv.Error as err:
        raise DataError.at(path, reader.line_num, None, f"malformed CSV ({err})") from None
    if header is None:
        raise DataError.at(path, 1, None, "is empty (no header line)")
    rows = SessionRows(path, lines, {name: f"column {column!r}" for name, column in columns.items()})
    position = {}
    for name, column in columns.items():
        if column not in header:
            raise DataError.at(path, header_line, f"{name!r}", f"column {column!r} is not in the header "
                               f"(columns: {cut_text(', '.join(map(repr, header)))}); check sep={sep!r}")
        position[name] = header.index(column)
    width = len(header)
    counts = np.array([len(record) for record in records], dtype=np.int64)
    for name in sorted(position, key=position.get):
        rows.flag(counts <= position[name], name,
                  f"is missing (the line has fewer fields than the header's {width})")
    rows.flag(counts > width, None, f"has more fields than the header's {width}")
    padded = [record + [""] * (width - len(record)) if len(record) < width else record for record in records]
    raw = {name: pd.Series([record[i] for record in padded], dtype=object) for name, i in position.items()}
    return rows, raw


def parquet_columns(path: Path, columns: Mapping[str, str]):
    """Rows (numbered from 1) and typed columns (canonical name -> Series) of a Parquet file."""
    require_file(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError.at(path, None, None, f"is not a readable Parquet file ({cut_text(err)})") from None
    for name, column in columns.items():
        if column not in frame.columns:
            raise DataError.at(path, None, f"{name!r}", f"column {column!r} is not in the file "
                               f"(columns: {cut_text(', '.join(map(repr, frame.columns)))})")
    rows = SessionRows(path, np.arange(1, len(frame) + 1), {n: f"column {c!r}" for n, c in columns.items()},
                       "row")
    return rows, {name: frame[column].reset_index(drop=True) for name, column in columns.items()}


def json_items(text: str, path: Path, meta: dict | None = None) -> tuple[list[int], list]:
    """Offsets and values of the sessions of an ACN JSON text (``{"_items": [...]}`` or a list);
    a top-level ``_meta`` object is copied into ``meta`` when given."""
    decoder = json.JSONDecoder()

    def skip(i):
        return _SPACE.match(text, i).end()

    def fail(i, problem):
        raise DataError.at(path, text.count("\n", 0, i) + 1, None, f"malformed JSON: {problem}")

    def value(i):
        try:
            return decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise DataError.at(path, err.lineno, None,
                               f"malformed JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise DataError.at(path, text.count("\n", 0, i) + 1, None, "malformed JSON: nested too deeply "
                               "to read") from None
        except ValueError as err:  # e.g. an integer of more digits than Python converts
            raise DataError.at(path, text.count("\n", 0, i) + 1, None,
                               f"malformed JSON: {cut_text(err)}") from None

    def sequence(i, close, entry):
        i = skip(i + 1)
        if text.startswith(close, i):
            return i + 1
        while True:
            i = skip(entry(i))
            if text.startswith(",", i):
                i = skip(i + 1)
            elif text.startswith(close, i):
                return i + 1
            else:
                fail(i, f"expected ',' or {close!r}")

    starts, items, found = [], [], []

    def item(i):
        starts.append(i)
        session, end = value(i)
        items.append(session)
        return end

    def member(i):
        key, i = value(i)
        if not isinstance(key, str):
            fail(i, "object keys must be strings")
        i = skip(i)
        if not text.startswith(":", i):
            fail(i, "expected ':'")
        i = skip(i + 1)
        if key == "_items" and text.startswith("[", i) and not found:
            found.append(key)
            return sequence(i, "]", item)
        member_value, end = value(i)
        if key == "_meta" and meta is not None and isinstance(member_value, dict):
            meta.update(member_value)
        return end

    i = skip(0)
    if text.startswith("[", i):
        i = sequence(i, "]", item)
    elif text.startswith("{", i):
        i = sequence(i, "}", member)
        if not found:
            raise DataError.at(path, 1, "'_items'", "the top-level object has no '_items' list")
    else:
        fail(i, "expected an object with an '_items' list, or a list of sessions")
    if skip(i) != len(text):
        fail(skip(i), "extra data after the top-level value")
    return starts, items


def line_numbers(text: str, offsets: list[int]) -> list[int]:
    """The 1-based line of each of the ascending character ``offsets`` of ``text``."""
    lines, line, previous = [], 1, 0
    for offset in offsets:
        line += text.count("\n", previous, offset)
        previous = offset
        lines.append(line)
    return lines
