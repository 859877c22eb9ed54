"""One entry of a scenario's ``series:`` block: a real series, a tariff or a constant, priced on
episode steps, and the format sniffing of its file."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.errors import DataError, require_file
from envs.data.forecasts import file_forecast_windows
from envs.data.prices import Tariff
from envs.data.series import resample, series_range

HEADER_CHARS = 100_000


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """One spec entry: a real series (or a TOU tariff, or a constant) priced on episode steps."""

    field: str
    series: pd.Series | None = None
    tariff: Tariff | None = None
    constant: float | None = None
    method: str = "hold"
    scale: float = 1.0
    offset: float = 0.0
    holidays: tuple = ()
    node: str | None = None
    forecasts: pd.DataFrame | None = None  # the value, then the forecasts issued with it, per file row
    lead_minutes: float = 0.0  # time between two forecast columns

    def range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        return None if self.series is None else series_range(self.series)

    def values(self, local: np.ndarray, utc: np.ndarray, dt_minutes: int) -> np.ndarray:
        if self.series is not None:
            raw = resample(self.series, utc, dt_minutes, self.method)
        elif self.tariff is not None:
            raw = self.tariff.prices(local, self.holidays)
        else:
            raw = np.full(local.shape, self.constant)
        return raw * self.scale + self.offset

    def forecast(self, utc: np.ndarray, truth: np.ndarray, dt_minutes: int, forecast_steps: int
                 ) -> np.ndarray:
        """(B, T+1, H+1) windows of the file's own forecasts, issued at the first T+1 steps of ``utc``.

        Lead h forecasts the UTC interval of step ``t + h`` (``utc`` (B, T+H+1), the wall-clock
        grid, so a daylight-saving change moves it as it moves ``truth`` (B, T+H+1)); a step that
        the change puts before the issue time (the clock hour a spring-forward day repeats) is
        already measured and shows its truth.
        """
        steps = truth.shape[1] - forecast_steps
        rows_utc = self.forecasts.index.tz_convert("UTC").tz_localize(None).to_numpy()
        lead = np.arange(steps)[:, None] + np.arange(1, forecast_steps + 1)[None, :]
        targets = utc[:, lead]
        windows = file_forecast_windows(self.forecasts.to_numpy(), rows_utc, utc[:, :steps], truth[:, :steps],
                                        dt_minutes, self.lead_minutes, forecast_steps, targets)
        windows[..., 1:] = windows[..., 1:] * self.scale + self.offset
        past = targets < utc[:, :steps, None]
        windows[..., 1:][past] = truth[:, lead][past]
        return windows


def csv_header(path: Path) -> list[str]:
    """Column names of the (first) CSV file at ``path`` (a glob joins files)."""
    files = sorted(path.parent.glob(path.name)) if any(ch in path.name for ch in "*?[") else [path]
    if not files:
        raise DataError(f"{path}: file does not exist")
    first = require_file(files[0])
    opener = gzip.open if first.suffix == ".gz" else open
    try:
        with opener(first, "rt", encoding="utf-8-sig") as handle:
            line = handle.readline(HEADER_CHARS)
    except UnicodeDecodeError as err:
        raise DataError.at(first, 1, None, f"is not utf-8-sig text ({err.reason})") from None
    except (OSError, EOFError) as err:
        raise DataError.at(first, None, None, f"cannot be read ({err})") from None
    return [h.strip() for h in line.split(",")]


def infer_format(path: Path) -> str:
    if path.suffix == ".json":
        return "tou"
    header = csv_header(path)
    if "Datetime (UTC)" in header:
        return "day_ahead"
    if "month" in header and "hour" in header:
        return "building"
    return "csv"
