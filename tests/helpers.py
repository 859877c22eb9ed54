"""Tiny sites and hand-made episodes, so that tests can work their expected numbers out by hand."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from envs.core import reset, step
from envs.episode import NO_ARRIVAL, Episode
from envs.observation import observe
from envs.reward import TERM_INDEX
from envs.site import SiteParams, load_site

DT_HOURS = 0.25
ETA_C, ETA_D = 0.9, 0.8

TINY_SITE = {
    "name": "tiny",
    "dt_minutes": 15,
    "horizon_steps": 8,
    "forecast_steps": 2,
    "nodes": [{"name": "grid", "limit_kw": 100}],
    "ports": [{"name": "p", "node": "grid", "max_charge_kw": 11, "max_discharge_kw": 11,
               "charge_efficiency": ETA_C, "discharge_efficiency": ETA_D}],
    "battery": {"taper_knee_soc": 0.8, "taper_floor": 0.1},
    "queue": {"capacity": 2, "patience_minutes": 30},
}


def tiny_site(**changes) -> SiteParams:
    """TINY_SITE (one 11 kW bidirectional port on a 100 kW grid node, dt 15 min) with top-level
    fields replaced by ``changes``."""
    spec = copy.deepcopy(TINY_SITE)
    spec.update(changes)
    return load_site(spec)


def port_group(node: str, count: int = 1, **fields) -> dict:
    """A port group like TINY_SITE's on ``node``; ``fields`` replace its entries."""
    group = dict(TINY_SITE["ports"][0], node=node, count=count, name=f"{node}_p")
    group.update(fields)
    return group


EV_DEFAULTS = {
    "arrival": 0,
    "departure": None,  # horizon_steps + 1: never leaves within the episode
    "announced": None,  # the real departure
    "battery_kwh": 40.0,
    "soc": 0.5,
    "requested_kwh": 20.0,
    "max_charge_kw": 7.0,
    "max_discharge_kw": 0.0,
    "consent": False,
    "min_soc": 0.2,
}


def ev(**fields) -> dict:
    unknown = fields.keys() - EV_DEFAULTS.keys()
    if unknown:
        raise TypeError(f"unknown EV fields {sorted(unknown)}")
    return {**EV_DEFAULTS, **fields}


def _series(value, b: int, length: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (b, length)).copy()


def make_episode(params: SiteParams, *envs: Sequence[Mapping], price_buy=0.2, price_sell=0.1,
                 tariff=0.3, carbon=0.5, setpoint=0.0, load: Mapping | None = None,
                 pv: Mapping | None = None, port_rank=None, port_down=None, weekday=0) -> Episode:
    """Episode with one env per positional list of EVs (``ev(...)`` dicts, sorted by arrival).

    Series are scalars or arrays of length ``L``; ``load`` and ``pv`` map node names to such
    series. ``port_rank`` defaults to the port order, so the i-th EV to plug takes port i.
    ``port_down`` is a (horizon_steps + 1, P) bool array shared by every env, or None.
    """
    envs = envs or ([],)
    b, n, p = len(envs), params.num_nodes, params.num_ports
    length = params.horizon_steps + params.forecast_steps + 1
    k = max(1, max(len(evs) for evs in envs))
    fields = {
        "ev_valid": np.zeros((b, k), dtype=bool),
        "ev_arrival_step": np.full((b, k), NO_ARRIVAL, dtype=np.int64),
        "ev_departure_step": np.full((b, k), NO_ARRIVAL + 1, dtype=np.int64),
        "ev_announced_departure_step": np.full((b, k), NO_ARRIVAL + 1, dtype=np.int64),
        "ev_battery_kwh": np.zeros((b, k)),
        "ev_soc_arrival": np.zeros((b, k)),
        "ev_requested_kwh": np.zeros((b, k)),
        "ev_max_charge_kw": np.zeros((b, k)),
        "ev_max_discharge_kw": np.zeros((b, k)),
        "ev_v2g_consent": np.zeros((b, k), dtype=bool),
        "ev_min_soc": np.zeros((b, k)),
    }
    for i, evs in enumerate(envs):
        for j, spec in enumerate(evs):
            spec = ev(**spec)
            departure = params.horizon_steps + 1 if spec["departure"] is None else spec["departure"]
            announced = departure if spec["announced"] is None else spec["announced"]
            fields["ev_valid"][i, j] = True
            fields["ev_arrival_step"][i, j] = spec["arrival"]
            fields["ev_departure_step"][i, j] = departure
            fields["ev_announced_departure_step"][i, j] = announced
            fields["ev_battery_kwh"][i, j] = spec["battery_kwh"]
            fields["ev_soc_arrival"][i, j] = spec["soc"]
            fields["ev_requested_kwh"][i, j] = spec["requested_kwh"]
            fields["ev_max_charge_kw"][i, j] = spec["max_charge_kw"]
            fields["ev_max_discharge_kw"][i, j] = spec["max_discharge_kw"]
            fields["ev_v2g_consent"][i, j] = spec["consent"]
            fields["ev_min_soc"][i, j] = spec["min_soc"]

    def node_series(mapping):
        out = np.zeros((b, length, n))
        for name, value in (mapping or {}).items():
            out[:, :, params.node_index(name)] = _series(value, b, length)
        return out

    rank = np.arange(p) if port_rank is None else np.asarray(port_rank)
    down = None
    if port_down is not None:
        down = np.broadcast_to(np.asarray(port_down, dtype=bool),
                               (b, params.horizon_steps + 1, p)).copy()
    episode = Episode(
        weekday=np.full(b, weekday, dtype=np.int64),
        price_buy_eur_kwh=_series(price_buy, b, length),
        price_sell_eur_kwh=_series(price_sell, b, length),
        tariff_eur_kwh=_series(tariff, b, length),
        carbon_kg_kwh=_series(carbon, b, length),
        setpoint_kw=_series(setpoint, b, length),
        node_load_kw=node_series(load),
        node_pv_kw=node_series(pv),
        port_rank=np.broadcast_to(rank, (b, p)).copy(),
        port_down=down,
        **fields,
    )
    episode.check(params)
    return episode


def term(terms: np.ndarray, name: str) -> np.ndarray:
    """One reward term (B,) out of a (B, len(TERMS)) array."""
    return terms[:, TERM_INDEX[name]]


def snapshot(obj) -> dict:
    """Deep copies of every array field of a dataclass (None and ints kept), for later comparison."""
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            out[field.name] = snapshot(value)
        elif isinstance(value, np.ndarray):
            out[field.name] = value.copy()
        elif isinstance(value, tuple):
            out[field.name] = tuple(v.copy() if isinstance(v, np.ndarray) else v for v in value)
        else:
            out[field.name] = copy.deepcopy(value)
    return out


def assert_same(actual, expected, path: str = "", atol: float = 0.0) -> None:
    """Recursive equality of snapshots (dicts, tuples, arrays, scalars); ``atol`` for floats."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}", atol)
    elif isinstance(expected, tuple):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]", atol)
    elif isinstance(expected, np.ndarray):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, path
        if expected.dtype.kind == "f" and atol > 0:
            np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=path)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=path)
    else:
        assert actual == expected, path


def fine_step_energy_kwh(params: SiteParams, soc: float, battery_kwh: float, car_kw: float, port_kw: float,
                         eta: float, steps: int = 1, substeps: int = 1000) -> float:
    """Battery kWh a car takes at full power over ``steps`` steps, integrated in ``substeps`` midpoint
    sub-steps per step: grid-side ``min(port, car * min(1, taper))`` with the taper linear from
    1 at the knee to the floor at full, and never past a full battery."""
    knee, floor = params.taper_knee_soc, params.taper_floor
    h = params.dt_hours / substeps

    def power_kw(s):
        return min(port_kw, car_kw * min(1.0, 1.0 - (1.0 - floor) * (s - knee) / (1.0 - knee)))

    energy = 0.0
    for _ in range(steps * substeps):
        middle = soc + 0.5 * h * eta * power_kw(soc) / battery_kwh
        gained = min(eta * power_kw(middle) * h, (1.0 - soc) * battery_kwh)
        soc += gained / battery_kwh
        energy += gained
    return energy


def actions_of(params: SiteParams, episode: Episode, policy):
    """The actions (steps, B, P) of ``policy`` (begin + predict) through a rollout, and the final state."""
    policy.begin(params, episode)
    state, actions = reset(params, episode), []
    while state.t < params.horizon_steps:
        action, _ = policy.predict(observe(params, state))
        actions.append(action)
        state, _, _ = step(params, state, action)
    return np.array(actions), state
