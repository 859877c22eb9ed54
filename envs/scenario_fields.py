"""Type checks of a scenario block's fields, before the generator's own range checks.

Each method returns the field's value in a clean form (floats, tuples, dicts of floats) or
raises ``SiteError`` naming ``scenario.<field>`` (and the list index), the value cut short.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from envs.errors import SiteError, cut, cut_key
from envs.limits import above

MAX_SIGMA = 5.0
MAX_MAGNITUDE = 1e6  # any scenario number: keeps prices, kWh and rates finite in float32 observations
MIN_PEAK_WIDTH_HOURS = 0.25  # narrower peaks fall between the steps' samples of the arrival density
SEQUENCE_FIELDS = ("peak_hours", "peak_widths_hours", "peak_weights", "soc_arrival_range",
                   "price_hourly_eur_kwh", "carbon_hourly_kg_kwh")
# per node entry: field -> (required, low, high, low is open)
_NODE_FIELDS = {
    "loads": {
        "base_kw": (False, 0, None, False),
        "peak_kw": (False, 0, None, False),
        "peak_hour": (False, None, None, False),
        "width_hours": (False, MIN_PEAK_WIDTH_HOURS, None, False),
        "weekend_factor": (False, 0, None, False),
        "noise": (False, 0, None, False),
    },
    "pv": {"peak_kw": (True, 0, None, False), "min_clear_sky": (False, 0, 1, False)},
}
_FLEET_FIELDS = {"battery_kwh": (True, 0, None, True), "max_charge_kw": (True, 0, None, True),
                 "max_discharge_kw": (False, 0, None, False), "share": (False, 0, None, True)}


class ScenarioFields:
    """Checks the fields of one scenario block; ``where`` starts every message."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, problem: str):
        raise SiteError(f"{self.where}.{field} {problem}")

    def number(self, field: str, value, low=None, high=None, low_open=False) -> float:
        if isinstance(value, bool) or value is None:
            self.fail(field, f"must be a number, got {cut(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(field, f"must be a number, got {cut(value)}")
        if not math.isfinite(number):
            self.fail(field, f"must be finite, got {cut(value)}")
        if abs(number) > MAX_MAGNITUDE and not field.endswith("_kw") and field != "sessions_per_day":
            self.fail(field, f"must lie within +-{MAX_MAGNITUDE:,.0f}, got {number:g}")
        if low is not None and (number <= low if low_open else number < low):
            self.fail(field, f"must be {'>' if low_open else '>='} {low}, got {number:g}")
        if high is not None and number > high:
            self.fail(field, f"must be <= {high}, got {number:g}")
        if field.endswith("_kw"):
            problem = above("power_kw", abs(number), "the value")
            if problem is not None:
                self.fail(field, f"is too large: {problem}")
        return number

    def numbers(self, field: str, value) -> tuple[float, ...]:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            self.fail(field, f"must be a list of numbers, got {cut(value)}")
        return tuple(self.number(f"{field}[{i}]", item) for i, item in enumerate(value))

    def entries(self, field: str, value) -> list[Mapping]:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            self.fail(field, f"must be a list of mappings, got {cut(value)}")
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                self.fail(f"{field}[{i}]", f"must be a mapping, got {cut(entry)}")
        return list(value)

    def _fields(self, field: str, entry: Mapping, rules: dict, extra: tuple[str, ...] = ()) -> dict:
        unknown = [key for key in entry if key not in rules and key not in extra]
        if unknown:
            self.fail(f"{field}.{cut_key(unknown[0])}", f"is not a known field (known: "
                                                   f"{', '.join(sorted([*rules, *extra]))})")
        out = {}
        for key, (required, low, high, low_open) in rules.items():
            if key in entry:
                out[key] = self.number(f"{field}.{key}", entry[key], low, high, low_open)
            elif required:
                self.fail(f"{field}.{key}", "is required")
        return out

    def node_specs(self, field: str, value) -> tuple[dict, ...]:
        """``loads`` or ``pv`` entries: each names its ``node``; kW values are >= 0."""
        specs = []
        for i, entry in enumerate(self.entries(field, value)):
            where = f"{field}[{i}]"
            spec = self._fields(where, entry, _NODE_FIELDS[field], ("node",))
            node = entry.get("node")
            if node is None:
                self.fail(f"{where}.node", "is required (the name of the node it hangs on)")
            if isinstance(node, bool) or not isinstance(node, str | int | float):
                self.fail(f"{where}.node", f"must be a node name, got {cut(node)}")
            specs.append({"node": str(node), **spec})
        return tuple(specs)

    def fleet(self, value) -> list[dict]:
        models = [self._fields(f"fleet[{i}]", entry, _FLEET_FIELDS)
                  for i, entry in enumerate(self.entries("fleet", value))]
        if not models:
            self.fail("fleet", "must list at least one model")
        return models

    def weekday(self, value):
        if value is None:
            return None
        days = [value] if not isinstance(value, Sequence) or isinstance(value, str) else list(value)
        for day in days:
            if isinstance(day, bool) or not isinstance(day, numbers.Integral) or not 0 <= day <= 6:
                self.fail("weekday", f"must be 0..6 (Monday..Sunday) or a list of them, got {cut(value)}")
        return value if not isinstance(value, Sequence) else tuple(value)
