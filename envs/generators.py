"""The one place that turns a site's ``scenario`` block into a generator.

Every generator module (``envs.parametric``, ``envs.data.fit``, ``envs.data.replay``,
``envs.data.overlay``, ``envs.data.forecasts``) sits below this one and never imports it; the
data modules are imported only when a scenario asks for them, so that ``import envs`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.episode import Generator
from envs.parametric import ParametricGenerator
from envs.site import SiteError, SiteParams


def generator_for(params: SiteParams) -> Generator:
    """The generator described by the site's ``scenario`` block.

    Its ``generator`` key picks "parametric" (the default, ``ParametricGenerator``), "fitted"
    (``envs.data.fit.FittedGenerator``) or "replay" (real sessions from a file, day by day:
    ``envs.data.replay_config.replay_from_config``). A replay takes its own fields (``sessions``,
    ``days``, ``date_range``, ...) and draws everything else (prices, loads, PV, the fleet) from the
    remaining fields, read as a fitted scenario when they hold a fitted one's tables (so that
    ``generator: replay`` over a fitted preset keeps its fleet and series) and as a parametric
    one otherwise. A ``series`` key wraps the result in ``envs.data.overlay.SeriesOverlay`` to
    cut prices, loads, PV and carbon from real data; a ``forecasts`` key (per series: ``mode``
    perfect, persistence or noisy, and its options) makes the observation show issued
    forecasts (``envs.data.forecasts.IssuedForecasts``). Errors raise SiteError naming the field.

    >>> import numpy as np
    >>> from envs.site import load_site
    >>> params = load_site("caltech")
    >>> type(generator_for(params)).__name__
    'ParametricGenerator'
    >>> generator_for(params).sample(params, np.random.default_rng(0), 2).num_envs
    2
    """
    scenario = dict(params.scenario)
    kind = scenario.pop("generator", "parametric")
    series = scenario.pop("series", None)
    forecasts = scenario.pop("forecasts", None)
    if kind == "replay":
        from envs.data.replay_config import REPLAY_KEYS, replay_from_config

        replay = {key: scenario.pop(key) for key in REPLAY_KEYS if key in scenario}
        base = scenario_generator(_base_kind(scenario), scenario, params)
        generator = replay_from_config(replay, params, base)
    else:
        generator = scenario_generator(kind, scenario, params)
    if series is not None:
        from envs.data.overlay import with_series

        generator = with_series(generator, {"series": series}, params)
    if forecasts is not None:
        from envs.data.forecasts import IssuedForecasts

        generator = IssuedForecasts(generator, forecasts, site_name=params.name)
    return generator


def scenario_generator(kind: str, scenario: Mapping[str, Any], params: SiteParams) -> Generator:
    """The parametric or fitted generator of a scenario's fields (no ``series`` or ``forecasts``)."""
    if kind == "parametric":
        return ParametricGenerator.from_config(scenario, params.name)
    if kind == "fitted":
        from envs.data.fit import FittedGenerator

        return FittedGenerator.from_config(scenario, params.name)
    raise SiteError(f"site {params.name!r}: scenario.generator must be 'parametric', 'fitted' or 'replay', "
                    f"got {kind!r}")


def _base_kind(scenario: Mapping[str, Any]) -> str:
    from envs.data.fit import FITTED_TABLES

    return "fitted" if any(key in scenario for key in FITTED_TABLES) else "parametric"
