"""Static site parameters: the power-node tree, ports, and their validation from YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import ConfigError, SiteError, cut, cut_key, cut_text
from envs.limits import above
from envs.reward import RewardWeights
from envs.yaml_io import load_yaml

MINUTES_PER_DAY = 1440
MAX_WEIGHT = 1e6  # a reward weight; larger ones overflow float32 rewards
ACTION_MODES = ("signed", "unit", "priority")  # meanings: envs.action_layer
OBSERVABILITY_LEVELS = ("full", "iso15118", "ocpp")  # what the site knows of its EVs: envs.observability


@dataclasses.dataclass(frozen=True, eq=False)
class SiteParams:
    """Static description of one charging site, shared by every env of a batch.

    Nodes form a tree (index 0 is the grid connection) listed in depth-first preorder, so the
    subtree of node ``n`` is the node range ``[n, node_subtree_end[n])`` and the ports below it
    are the port range ``[node_port_lo[n], node_port_hi[n])``. Limits are kW at the node's
    upstream side: import (power drawn from the parent) and export (power fed back).
    Port powers are grid-side kW; the battery receives ``charge_efficiency`` of it when charging
    and gives ``1 / discharge_efficiency`` of it when discharging.
    """

    name: str
    dt_hours: float
    horizon_steps: int
    start_minute: int
    node_names: tuple[str, ...]
    node_parent: np.ndarray  # (N,) int, -1 for the root
    node_import_limit_kw: np.ndarray  # (N,)
    node_export_limit_kw: np.ndarray  # (N,)
    port_names: tuple[str, ...]
    port_node: np.ndarray  # (P,) int, node each port hangs on
    port_max_charge_kw: np.ndarray  # (P,)
    port_max_discharge_kw: np.ndarray  # (P,) 0 = unidirectional
    port_charge_efficiency: np.ndarray  # (P,)
    port_discharge_efficiency: np.ndarray  # (P,)
    taper_knee_soc: float = 0.8
    taper_floor: float = 0.1
    queue_capacity: int = 10
    queue_patience_steps: int = 4
    forecast_steps: int = 8
    demand_forecast: bool = False
    stay_timing: str = "rounded"  # or "exact": first and last steps of a stay count only in part
    action_mode: str = "signed"  # one of ACTION_MODES: how core.step reads an action
    observability: str = "full"  # one of OBSERVABILITY_LEVELS: what the observation shows of the EVs
    reward: RewardWeights = dataclasses.field(default_factory=RewardWeights)
    scenario: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.action_mode not in ACTION_MODES:
            raise SiteError(f"site {cut(self.name)}: action_mode must be one of {', '.join(ACTION_MODES)}, "
                            f"got {cut(self.action_mode)}")
        if not isinstance(self.observability, str) or self.observability not in OBSERVABILITY_LEVELS:
            raise SiteError(f"site {cut(self.name)}: observability must be one of "
                            f"{', '.join(OBSERVABILITY_LEVELS)}, got {cut(self.observability)}")
        parent = self.node_parent
        n = len(parent)
        depth = np.zeros(n, dtype=np.int64)
        for i in range(1, n):
            depth[i] = depth[parent[i]] + 1
        subtree_end = np.arange(1, n + 1)
        for i in range(n - 1, 0, -1):
            subtree_end[parent[i]] = max(subtree_end[parent[i]], subtree_end[i])
        port_lo = np.searchsorted(self.port_node, np.arange(n), side="left")
        port_hi = np.searchsorted(self.port_node, subtree_end - 1, side="right")
        levels = tuple(np.flatnonzero(depth == d) for d in range(int(depth.max()), -1, -1))
        slots = []
        for level in levels:
            slot = np.full(len(self.port_node), len(level), dtype=np.int64)
            for i, node in enumerate(level):
                slot[port_lo[node]:port_hi[node]] = i
            slots.append(slot)
        knee, floor, dt = self.taper_knee_soc, self.taper_floor, self.dt_hours
        eta_c, eta_d = self.port_charge_efficiency, self.port_discharge_efficiency
        for name, value in (
            ("taper_slope", (1.0 - floor) / (1.0 - knee)),
            ("taper_intercept", 1.0 + (1.0 - floor) * knee / (1.0 - knee)),
            ("charge_kwh_per_kw_step", eta_c * dt),
            ("discharge_kwh_per_kw_step", dt / eta_d),
            ("charge_kw_per_kwh_step", 1.0 / (eta_c * dt)),
            ("discharge_kw_per_kwh_step", eta_d / dt),
            ("node_export_floor_kw", -self.node_export_limit_kw),
            ("bidirectional", bool((self.port_max_discharge_kw > 0).any())),
            ("port_node_incidence", _incidence(port_lo, port_hi, len(self.port_node))),
            ("node_depth", depth),
            ("node_subtree_end", subtree_end),
            ("node_port_lo", port_lo),
            ("node_port_hi", port_hi),
            ("levels_bottom_up", levels),
            ("level_port_slot", tuple(slots)),
        ):
            object.__setattr__(self, name, value)

    @property
    def num_ports(self) -> int:
        return len(self.port_node)

    @property
    def num_nodes(self) -> int:
        return len(self.node_parent)

    @property
    def steps_per_day(self) -> int:
        return round(24 / self.dt_hours)

    def node_index(self, name: str) -> int:
        try:
            return self.node_names.index(name)
        except ValueError:
            raise SiteError(f"site {cut(self.name)}: unknown node {cut(name)}") from None

    def replace(self, **changes) -> SiteParams:
        return dataclasses.replace(self, **changes)


DENSE_INCIDENCE_MAX_ENTRIES = 100_000


def _incidence(port_lo: np.ndarray, port_hi: np.ndarray, num_ports: int) -> np.ndarray | None:
    """(P, N) 0/1 matrix of ports below each node, when small enough to beat prefix sums."""
    if num_ports * len(port_lo) > DENSE_INCIDENCE_MAX_ENTRIES:
        return None
    ports = np.arange(num_ports)[:, None]
    return ((ports >= port_lo) & (ports < port_hi)).astype(np.float64)


def builtin_sites() -> list[str]:
    folder = resources.files("envs") / "sites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_site(site: str | Path | Mapping[str, Any] | SiteParams, **overrides) -> SiteParams:
    """Site from a preset name, a YAML path, a mapping, or an existing SiteParams."""
    if isinstance(site, SiteParams):
        return site.replace(**overrides) if overrides else site
    if isinstance(site, Mapping):
        spec, origin = dict(site), "<mapping>"
    elif not isinstance(site, str | Path):
        raise SiteError("site must be a preset name, a YAML path, a mapping or a SiteParams, "
                        f"got {cut(site)}")
    else:
        path = Path(site)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.exists():
                raise SiteError(f"site file {cut(str(path))} does not exist")
            origin, text = str(path), None
        else:
            preset = resources.files("envs") / "sites" / f"{site}.yaml"
            if not preset.is_file():
                raise SiteError(f"unknown site {cut(str(site))}; presets: {', '.join(builtin_sites())}")
            path, origin, text = preset, f"preset {site!r}", preset.read_text()
        try:
            spec = load_yaml(path, text=text, origin=origin)
        except ConfigError as err:
            raise SiteError(f"site {err}") from None
        if not isinstance(spec, Mapping):
            raise SiteError(f"site {origin}: top level must be a mapping")
    spec = deep_update(dict(spec), overrides)
    return _parse(spec, origin)


def deep_update(base: dict, changes: Mapping) -> dict:
    """``base`` with ``changes`` merged in (nested mappings merged key by key, in place); returned."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = deep_update(dict(base[key]), value)
        else:
            base[key] = value
    return base


class _Reader:
    def __init__(self, origin: str, name: str):
        preset = origin == f"preset {name!r}"
        self.where = f"site {name!r}" if preset else f"site {cut(name)} ({cut_text(origin)})"

    def fail(self, field: str, problem: str):
        raise SiteError(f"{self.where}: {field} {problem}")

    def limit(self, field: str, name: str, value, what: str):
        problem = above(name, value, what)
        if problem is not None:
            raise SiteError(f"{self.where}: {field}: {problem}")

    def mapping(self, spec, key) -> Mapping:
        value = spec.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping of fields, got {cut(value)}")
        return value

    def number(self, spec, key, field, default=None, low=None, high=None, low_open=False, limit=None):
        value = spec.get(key, default)
        if value is None:
            self.fail(field, "is required")
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(field, f"must be a number, got {cut(value)}")
        if not np.isfinite(value):
            self.fail(field, f"must be finite, got {value!r}")
        if limit is not None:
            self.limit(field, limit, value, "the value")
        if low is not None and (value <= low if low_open else value < low):
            self.fail(field, f"must be {'>' if low_open else '>='} {low}, got {value:g}")
        if high is not None and value > high:
            self.fail(field, f"must be <= {high}, got {value:g}")
        return value

    def integer(self, spec, key, field, default=None, low=None, limit=None):
        value = self.number(spec, key, field, default, low, limit=limit)
        if value != int(value):
            self.fail(field, f"must be an integer, got {value:g}")
        return int(value)


def _parse(spec: Mapping[str, Any], origin: str) -> SiteParams:
    name = spec.get("name", Path(origin).stem if origin != "<mapping>" else "custom")
    if not isinstance(name, str | int | float) or isinstance(name, bool) or len(str(name)) > 200:
        raise SiteError(f"site ({cut_text(origin)}): name must be a text of at most 200 characters, "
                        f"got {cut(name)}")
    name = str(name)
    r = _Reader(origin, name)
    known = {"name", "description", "dt_minutes", "horizon_steps", "start_hour", "nodes", "ports",
             "battery", "queue", "forecast_steps", "demand_forecast", "stay_timing", "action_mode",
             "observability", "reward", "scenario"}
    for key in spec:
        if key not in known:
            r.fail(cut_key(key), f"is not a known field (known: {', '.join(sorted(known))})")
    dt_minutes = r.number(spec, "dt_minutes", "dt_minutes", 15, 1, 60)
    if dt_minutes != int(dt_minutes) or MINUTES_PER_DAY % int(dt_minutes):
        r.fail("dt_minutes", f"must be a whole number of minutes dividing the day (1440), got {dt_minutes:g}")
    dt_minutes = int(dt_minutes)
    horizon = r.integer(spec, "horizon_steps", "horizon_steps", MINUTES_PER_DAY // dt_minutes, 1,
                        limit="horizon_steps")
    forecast_steps = r.integer(spec, "forecast_steps", "forecast_steps", 8, 0, limit="forecast_steps")
    start_hour = r.number(spec, "start_hour", "start_hour", 0, 0, 24)
    start_minute = round(start_hour * 60)
    if start_minute % dt_minutes or start_minute >= MINUTES_PER_DAY:
        r.fail("start_hour", f"must fall on a step boundary in [0, 24), got {start_hour:g}")

    nodes, ports = _parse_tree(spec, r)
    order = _preorder(nodes, r)
    position = {node["name"]: i for i, node in enumerate(order)}
    ports.sort(key=lambda port: position[port["node"]])

    cells = (horizon + forecast_steps + 1) * (len(order) + len(ports))
    r.limit("horizon_steps", "episode_cells", cells,
            "the episode's size (horizon_steps + forecast_steps + 1) x (nodes + ports)")

    battery, queue = r.mapping(spec, "battery"), r.mapping(spec, "queue")
    reward_spec = r.mapping(spec, "reward")
    r.mapping(spec, "scenario")
    patience_minutes = r.number(queue, "patience_minutes", "queue.patience_minutes", 60, 0)
    names = [field.name for field in dataclasses.fields(RewardWeights)]
    for key in reward_spec:
        if key not in names:
            r.fail(f"reward.{cut_key(key)}", f"is not a known weight (known: {', '.join(names)})")
    weights = RewardWeights(**reward_spec)
    for field in dataclasses.fields(weights):
        r.number(reward_spec, field.name, f"reward.{field.name}", getattr(weights, field.name), 0, MAX_WEIGHT)
    demand_forecast = spec.get("demand_forecast", False)
    if not isinstance(demand_forecast, bool):
        r.fail("demand_forecast", f"must be true or false, got {cut(demand_forecast)}")
    stay_timing = spec.get("stay_timing", "rounded")
    if stay_timing not in ("rounded", "exact"):
        r.fail("stay_timing", f"must be rounded or exact, got {cut(stay_timing)}")
    action_mode = spec.get("action_mode", "signed")
    if not isinstance(action_mode, str) or action_mode not in ACTION_MODES:
        r.fail("action_mode", f"must be one of {', '.join(ACTION_MODES)}, got {cut(action_mode)}")
    observability = spec.get("observability", "full")
    if not isinstance(observability, str) or observability not in OBSERVABILITY_LEVELS:
        r.fail("observability", f"must be one of {', '.join(OBSERVABILITY_LEVELS)}, got {cut(observability)}")
    knee = r.number(battery, "taper_knee_soc", "battery.taper_knee_soc", 0.8, 0, 1)
    if knee >= 1:
        r.fail("battery.taper_knee_soc", f"must be < 1, got {knee:g}")
    array = np.asarray
    return SiteParams(
        name=name,
        dt_hours=dt_minutes / 60,
        horizon_steps=horizon,
        start_minute=start_minute,
        node_names=tuple(node["name"] for node in order),
        node_parent=array([-1 if n["parent"] is None else position[n["parent"]] for n in order],
                          dtype=np.int64),
        node_import_limit_kw=array([n["import_kw"] for n in order], dtype=np.float64),
        node_export_limit_kw=array([n["export_kw"] for n in order], dtype=np.float64),
        port_names=tuple(p["name"] for p in ports),
        port_node=array([position[p["node"]] for p in ports], dtype=np.int64),
        port_max_charge_kw=array([p["max_charge_kw"] for p in ports], dtype=np.float64),
        port_max_discharge_kw=array([p["max_discharge_kw"] for p in ports], dtype=np.float64),
        port_charge_efficiency=array([p["charge_efficiency"] for p in ports], dtype=np.float64),
        port_discharge_efficiency=array([p["discharge_efficiency"] for p in ports], dtype=np.float64),
        taper_knee_soc=knee,
        taper_floor=r.number(battery, "taper_floor", "battery.taper_floor", 0.1, 0, 1),
        queue_capacity=r.integer(queue, "capacity", "queue.capacity", 10, 0),
        queue_patience_steps=int(patience_minutes // dt_minutes),
        forecast_steps=forecast_steps,
        demand_forecast=demand_forecast,
        stay_timing=stay_timing,
        action_mode=action_mode,
        observability=observability,
        reward=weights,
        scenario=dict(spec.get("scenario", {}) or {}),
    )


def _parse_tree(spec, r: _Reader):
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        r.fail("nodes", "must be a non-empty list of {name, parent, limit_kw}")
    r.limit("nodes", "nodes", len(raw_nodes), "the site's node count")
    nodes, names = [], set()
    for i, raw in enumerate(raw_nodes):
        field = f"nodes[{i}]"
        if not isinstance(raw, Mapping) or "name" not in raw:
            r.fail(field, "must be a mapping with a name")
        node_name = _name(raw["name"], f"{field}.name", r)
        if node_name in names:
            r.fail(f"{field}.name", f"duplicates node {node_name!r}")
        names.add(node_name)
        limit = r.number(raw, "limit_kw", f"{field}.limit_kw", None, 0, low_open=True, limit="power_kw")
        export = r.number(raw, "export_limit_kw", f"{field}.export_limit_kw", limit, 0, limit="power_kw")
        parent = None if raw.get("parent") is None else _name(raw["parent"], f"{field}.parent", r)
        nodes.append({"name": node_name, "parent": parent, "import_kw": limit, "export_kw": export,
                      "field": field})
    roots = [n for n in nodes if n["parent"] is None]
    if len(roots) != 1:
        r.fail("nodes", f"must have exactly one root (a node without parent), found {len(roots)}")
    for node in nodes:
        if node["parent"] is not None and str(node["parent"]) not in names:
            r.fail(f"{node['field']}.parent", f"names unknown node {node['parent']!r}")
    raw_ports = spec.get("ports")
    if not isinstance(raw_ports, list) or not raw_ports:
        r.fail("ports", "must be a non-empty list of port groups")
    ports = []
    for g, raw in enumerate(raw_ports):
        field = f"ports[{g}]"
        if not isinstance(raw, Mapping):
            r.fail(field, "must be a mapping")
        node = _name(raw.get("node"), f"{field}.node", r)
        if node not in names:
            r.fail(f"{field}.node", f"names unknown node {cut(raw.get('node'))}")
        count = r.integer(raw, "count", f"{field}.count", 1, 1)
        r.limit(f"{field}.count", "ports", len(ports) + count, "the site's port count")
        group = _name(raw.get("name", f"{node}_port"), f"{field}.name", r)
        charge = r.number(raw, "max_charge_kw", f"{field}.max_charge_kw", None, 0, low_open=True,
                          limit="power_kw")
        discharge = r.number(raw, "max_discharge_kw", f"{field}.max_discharge_kw", 0, 0, limit="power_kw")
        eff_c = r.number(raw, "charge_efficiency", f"{field}.charge_efficiency", 0.95, 0, 1, True)
        eff_d = r.number(raw, "discharge_efficiency", f"{field}.discharge_efficiency", eff_c, 0, 1, True)
        per_charger = r.integer(raw, "ports_per_charger", f"{field}.ports_per_charger", 1, 1)
        charger_kw = raw.get("charger_limit_kw")
        if charger_kw is not None:
            charger_kw = r.number(raw, "charger_limit_kw", f"{field}.charger_limit_kw", None, 0,
                                  low_open=True, limit="power_kw")
            r.limit(f"{field}.count", "nodes", len(nodes) + -(-count // per_charger), "the site's node count")
        for i in range(count):
            parent = node
            if charger_kw is not None:
                parent = f"{group}_charger{i // per_charger}"
                if i % per_charger == 0:
                    if parent in names:
                        r.fail(f"{field}.name", f"makes charger node {parent!r} that already exists")
                    names.add(parent)
                    nodes.append({"name": parent, "parent": node, "import_kw": charger_kw,
                                  "export_kw": charger_kw, "field": field})
            ports.append({"name": f"{group}{i}", "node": parent, "max_charge_kw": charge,
                          "max_discharge_kw": discharge, "charge_efficiency": eff_c,
                          "discharge_efficiency": eff_d})
    port_names = [p["name"] for p in ports]
    if len(set(port_names)) != len(port_names):
        r.fail("ports", "produce duplicate port names; give each group a distinct name")
    return nodes, ports


def _name(value, field: str, r: _Reader) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or len(str(value)) > 200:
        r.fail(field, f"must be a name (a text of at most 200 characters), got {cut(value)}")
    return str(value)


def _preorder(nodes: list[dict], r: _Reader) -> list[dict]:
    children: dict[str | None, list[dict]] = {}
    for node in nodes:
        children.setdefault(None if node["parent"] is None else str(node["parent"]), []).append(node)
    order, stack, seen = [], list(reversed(children[None])), set()
    while stack:
        node = stack.pop()
        seen.add(node["name"])
        order.append(node)
        stack.extend(reversed(children.get(node["name"], [])))
    if len(order) != len(nodes):
        cyclic = sorted(n["name"] for n in nodes if n["name"] not in seen)
        first = next(n for n in nodes if n["name"] not in seen)
        r.fail(f"{first['field']}.parent", f"leaves nodes {cyclic} unreachable from the root (a cycle)")
    return order
