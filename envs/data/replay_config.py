"""The ``generator: replay`` block of a site's scenario, read and checked into a ``ReplayGenerator``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.errors import DataError
from envs.data.replay import REPLAY_FIELDS, REPLAY_KEYS, ReplayGenerator, as_days, replay_days
from envs.data.sessions import READERS, read_sessions
from envs.episode import Generator
from envs.errors import ConfigError, cut, cut_text
from envs.site import SiteError, SiteParams

SESSIONS_KEYS = ("data_dir", "format", "path", "reader", "report", "stations")
_LOG = logging.getLogger(__name__)


def replay_from_config(config: Mapping[str, Any], params: SiteParams, base: Generator) -> ReplayGenerator:
    """The replay a site's ``scenario`` block describes (``generator: replay``): its ``REPLAY_KEYS``.

    ``sessions`` names the file: ``path`` (a file or a list of files), ``format``
    (``acn_csv``, the default, ``acn_json`` or ``csv``), ``reader`` (keyword arguments of the
    reader: tz, skip_invalid; for csv columns, sep, decimal, date_format), ``data_dir``
    (base of relative paths), ``stations`` (keep only these station ids) and ``report`` (a
    path: the data-quality report is written there as JSON). ``days`` lists the dates to
    replay, or ``date_range`` [first, last] keeps the replayable days in that range (a
    train/test split); ``shuffle``, ``carry_over``, ``min_sessions``, ``special_days`` and
    ``cap_request_to_stay`` are the constructor's. ``base`` draws the rest (prices, loads, PV,
    the fleet; ``envs.generators.generator_for`` makes it from the other scenario fields). The
    report's summary (``ReplayGenerator.report(params)``) is logged at INFO level.
    Errors raise SiteError naming the field.
    """
    config = dict(config or {})
    config.pop("generator", None)

    def fail(field, problem):
        raise SiteError(f"site {params.name!r}: scenario.{field} {problem}")

    spec = config.pop("sessions", None)
    if not isinstance(spec, Mapping) or "path" not in spec:
        fail("sessions", "must be a mapping with a path (the session file) for generator: replay")
    unknown = sorted(set(spec) - set(SESSIONS_KEYS))
    if unknown:
        fail(f"sessions.{unknown[0]}", f"is not a known field (known: {', '.join(SESSIONS_KEYS)})")
    stations = spec.get("stations")
    if stations is not None and not isinstance(stations, (list, tuple)):
        fail("sessions.stations", f"must be a list of station ids, got {cut(stations)}")
    fmt = spec.get("format", "acn_csv")
    if not isinstance(fmt, str) or fmt not in READERS:
        fail("sessions.format", f"must be one of {', '.join(READERS)}, got {cut(fmt)}")
    for key in ("data_dir", "report"):
        if spec.get(key) is not None and not isinstance(spec[key], str | os.PathLike):
            fail(f"sessions.{key}", f"must be a path, got {cut(spec[key])}")
    base_dir = Path(spec.get("data_dir") or ".").expanduser()
    paths = spec["path"] if isinstance(spec["path"], (list, tuple)) else [spec["path"]]
    for i, path in enumerate(paths):
        if not isinstance(path, str | os.PathLike):
            fail("sessions.path" + (f"[{i}]" if isinstance(spec["path"], (list, tuple)) else ""),
                 f"must be a path (or a list of paths), got {cut(path)}")
    files = [base_dir / Path(path).expanduser() for path in paths]
    missing = [file for file in files if not file.is_file()]
    if missing or not files:
        fail("sessions.path", f"names no session file: {cut_text(missing[0])}" if missing
             else "lists no file")
    reader = spec.get("reader") or {}
    if not isinstance(reader, Mapping):
        fail("sessions.reader", f"must be a mapping of the reader's options, got {cut(reader)}")
    try:
        sessions = read_sessions(files, fmt, stations=stations, **reader)
    except DataError:
        raise
    except ConfigError as err:  # an option of the reader with a bad value
        fail("sessions.reader", f"has an option the {fmt} reader cannot use: {cut_text(err)}")
    except (TypeError, ValueError) as err:  # options the reader does not take
        fail("sessions.reader", f"does not fit the {fmt} reader: {cut_text(err)}")
    options = {key: config.pop(key) for key in REPLAY_FIELDS if key in config}
    if not len(sessions):
        fail("sessions", f"leaves no session to replay ({sessions.attrs['report'].summary()})")
    for key in ("shuffle", "carry_over", "cap_request_to_stay"):
        if not isinstance(options.get(key, True), bool):
            fail(key, f"must be true or false, got {cut(options[key])}")
    minimum = options.get("min_sessions", 1)
    if isinstance(minimum, bool) or not isinstance(minimum, (int, np.integer)) or minimum < 0:
        fail("min_sessions", f"must be a whole number >= 0, got {cut(minimum)}")
    for key in ("days", "special_days"):
        if options.get(key) is None:
            continue
        try:
            dates = as_days(options[key])
        except (TypeError, ValueError):
            fail(key, f"must be a list of dates, got {cut(options[key])}")
        if key == "days" and not len(dates):
            fail(key, "must list at least one date")
    date_range = config.pop("date_range", None)
    unknown = sorted(set(config) - set(REPLAY_KEYS))
    if unknown:
        fail(unknown[0], f"is not a field of the replay (known: {', '.join(REPLAY_KEYS)})")
    if date_range is not None:
        if "days" in options:
            fail("date_range", "and days exclude each other")
        try:
            first, last = as_days(date_range)
        except (TypeError, ValueError):
            fail("date_range", f"must be [first, last] dates, got {cut(date_range)}")
        try:
            days = replay_days(sessions, params, minimum)
        except ValueError as err:
            fail("sessions", cut_text(err))
        days = np.asarray(days, dtype="datetime64[D]")
        options["days"] = [str(day) for day in days[(days >= first) & (days <= last)]]
        if not options["days"]:
            fail("date_range", f"leaves no replayable day between {first} and {last}")
    try:
        generator = ReplayGenerator(sessions, base=base, **options)
    except (TypeError, ValueError) as err:
        fail("sessions", cut_text(err))
    try:
        generator.days_for(params)
    except ValueError as err:
        fail("days", cut_text(err))
    report = generator.report(params)
    _LOG.info("replayed sessions: %s", report.summary())
    if spec.get("report") is not None:
        try:
            report.write(Path(spec["report"]).expanduser())
        except OSError as err:
            fail("sessions.report", f"cannot be written: {cut_text(err)}")
    return generator
