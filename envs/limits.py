"""Upper bounds on every size an input can ask for, so that bad input fails fast, not out of memory.

============================ ============ ===================================================
name                         default      what it bounds
============================ ============ ===================================================
``ports``                    10,000       ports of a site (after ``count`` expands groups)
``nodes``                    20,000       power nodes of a site (chargers included)
``horizon_steps``            100,000      steps of an episode
``forecast_steps``           10,000       steps of the forecast window
``episode_cells``            20,000,000   (horizon + forecast + 1) steps x (nodes + ports)
``sessions_per_day``         100,000      expected arrivals per day of a scenario
``episodes``                 100,000      episodes asked of a script (``num_episodes``)
``envs``                     100,000      envs of one vector env (``num_envs``)
``power_kw``                 1,000,000    any power limit or rating in kW (1 GW)
``series_steps``             10,000,000   steps of a time series on its regular grid
``series_gap_days``          92           longest run of missing steps a reader fills
``tariff_schedules``         1,000        schedules of a time-of-use tariff file
``yaml_bytes``               1,000,000    size of a YAML file
``yaml_nodes``               1,000,000    values of a YAML document with aliases expanded
============================ ============ ===================================================

A limit is raised for the whole process with ``envs.limits.LIMITS["ports"] = 50_000``, or
from outside (e.g. for a script) with the environment variable ``ENVS_MAX_PORTS=50000``
(``ENVS_MAX_`` and the name in capitals), which wins over ``LIMITS``. Going above a limit
raises :class:`~envs.errors.ConfigError` (or ``DataError`` for a file) saying the limit and
both ways to raise it.
"""

from __future__ import annotations

import math
import numbers
import os

from envs.errors import ConfigError, cut

LIMITS: dict[str, float] = {
    "ports": 10_000,
    "nodes": 20_000,
    "horizon_steps": 100_000,
    "forecast_steps": 10_000,
    "episode_cells": 20_000_000,
    "sessions_per_day": 100_000,
    "episodes": 100_000,
    "envs": 100_000,
    "power_kw": 1_000_000,
    "series_steps": 10_000_000,
    "series_gap_days": 92,
    "tariff_schedules": 1_000,
    "yaml_bytes": 1_000_000,
    "yaml_nodes": 1_000_000,
}


def limit(name: str) -> float:
    """The limit ``name`` in effect: its environment variable, else ``LIMITS[name]``."""
    variable = f"ENVS_MAX_{name.upper()}"
    text = os.environ.get(variable)
    if text is None:
        return LIMITS[name]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"environment variable {variable} must be a number, got {cut(text)}") from None
    if not value > 0:
        raise ConfigError(f"environment variable {variable} must be > 0, got {cut(text)}")
    return value


def how_to_raise(name: str) -> str:
    return (f"raise it with envs.limits.LIMITS[{name!r}] = N or the environment variable "
            f"ENVS_MAX_{name.upper()}=N")


def above(name: str, value, what: str) -> str | None:
    """The problem text when ``value`` exceeds the limit ``name`` (None when within it)."""
    bound = limit(name)
    if value <= bound:
        return None
    return f"{what} is {_number(value)}, above the limit of {_number(bound)}; {how_to_raise(name)}"


def _number(value) -> str:
    if isinstance(value, numbers.Integral) and abs(value) >= 10**15:
        return f"a {len(str(abs(value)))}-digit number"
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:,g}"


def check_size(field: str, value, name: str, what: str | None = None) -> None:
    """Raise ConfigError naming ``field`` when ``value`` exceeds the limit ``name``."""
    problem = above(name, value, what or "the value")
    if problem is not None:
        raise ConfigError(f"{field}: {problem}")


def check_count(field: str, value, name: str | None, low: int = 1) -> int:
    """``value`` as an int in ``[low, limit name]``, else ConfigError naming ``field``.

    Accepts ints, whole floats and text of a whole number (a Hydra override), never bools;
    ``name`` None sets no upper limit (e.g. a seed: ``check_count("seed", seed, None, low=0)``).

    >>> check_count("num_episodes", "7", "episodes")
    7
    >>> check_count("num_episodes", 2.7, "episodes")
    Traceback (most recent call last):
    ...
    envs.errors.ConfigError: num_episodes must be a whole number, got 2.7
    """
    number = _parsed(value)
    whole = isinstance(number, numbers.Integral) or (
        isinstance(number, numbers.Real) and math.isfinite(number) and number == int(number))
    if isinstance(number, bool) or not whole:
        raise ConfigError(f"{field} must be a whole number, got {cut(value)}")
    number = int(number)
    if number < low:
        raise ConfigError(f"{field} must be >= {low}, got {number}")
    if name is not None:
        check_size(field, number, name)
    return number


def _parsed(value):
    """``value``, or the float a text of a number reads as (None for any other text)."""
    if not isinstance(value, str):
        return value
    try:
        return float(value.strip())
    except ValueError:
        return None


def check_number(field: str, value, low: float | None = None, above: bool = False) -> float:
    """``value`` as a finite float, at least ``low`` (above it with ``above``), else ConfigError
    naming ``field``. Accepts ints, floats and text of a number (a Hydra override), never bools.

    >>> check_number("imitation.value_weight", "0.5", low=0.0)
    0.5
    >>> check_number("imitation.learning_rate", 0, low=0.0, above=True)
    Traceback (most recent call last):
    ...
    envs.errors.ConfigError: imitation.learning_rate must be above 0, got 0
    """
    number = _parsed(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
        raise ConfigError(f"{field} must be a number, got {cut(value)}")
    number = float(number)
    if low is not None and (number <= low if above else number < low):
        raise ConfigError(f"{field} must be {'above' if above else 'at least'} {low:g}, got {cut(value)}")
    return number
