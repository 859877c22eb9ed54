"""Pure pieces of the step: feasible port power, node projection, battery update, plug events.

Every function works on whole batches: arrays (B, P) over envs and ports, (B, N) over nodes.
Port power is grid-side kW, positive when charging.
"""

from __future__ import annotations

import numpy as np

from envs.site import SiteParams


def available_power(params: SiteParams, soc, battery_kwh, remaining_kwh, ev_max_charge_kw, charge_cap_kw,
                    taper_start_soc, ev_max_discharge_kw, min_soc):
    """Grid-side (charge, discharge) kW each port can take this step, both >= 0, as step averages.

    Charge: ``charge_cap_kw`` (the lower of the port's and the car's limit) until the car's
    taper bites, then the step average of what ``taper_energy_kwh`` integrates; at most the room
    left in the battery and the energy still requested. The taper is only evaluated above
    ``taper_start_soc`` (``plug_limits``), where it can bite within the step. Discharge: the
    consented limit and the energy above ``min_soc`` (never below SoC 0, whatever ``min_soc``
    says).
    """
    room_kwh = np.minimum((1.0 - soc) * battery_kwh, remaining_kwh)
    room_kwh *= params.charge_kw_per_kwh_step
    charge = np.minimum(charge_cap_kw, room_kwh, out=room_kwh)
    tapered = soc > taper_start_soc
    if tapered.any():
        at = np.nonzero(tapered)
        port = at[1]
        car_kw, cap_kw = ev_max_charge_kw[at], charge_cap_kw[at]
        kwh = taper_energy_kwh(params, soc[at], battery_kwh[at], car_kw, cap_kw, port)
        charge[at] = np.minimum(charge[at], kwh * params.charge_kw_per_kwh_step[port])
    np.maximum(charge, 0.0, out=charge)
    if not params.bidirectional:
        return charge, np.zeros(charge.shape)
    above_min_kwh = soc - np.maximum(min_soc, 0.0)
    above_min_kwh *= battery_kwh
    above_min_kwh *= params.discharge_kw_per_kwh_step
    discharge = np.minimum(ev_max_discharge_kw, above_min_kwh)
    np.maximum(discharge, 0.0, out=discharge)
    return charge, discharge


def taper_energy_kwh(params: SiteParams, soc, battery_kwh, car_kw, cap_kw, port, hours=None):
    """Energy (kWh into the battery) a car takes at full power within ``hours`` (default: a step).

    Grid-side, the car takes ``cap_kw`` (its limit and the port's, the lower) until its own limit
    tapered linearly, ``car_kw * min(1, a - b * soc)`` (1 at ``taper_knee_soc``, ``taper_floor``
    at full), falls to it at ``taper_cross_soc``; from then on the SoC follows the exponential
    approach of ``dsoc/dt = eta * car_kw * (a - b * soc) / battery_kwh``. The battery's room is
    not applied here. Arrays broadcast; ``port`` gives each entry's charge efficiency.
    """
    hours = params.dt_hours if hours is None else hours
    eta = params.port_charge_efficiency[port]
    a, b = params.taper_intercept, params.taper_slope
    cap_kwh_per_h = eta * cap_kw
    if b == 0:
        return cap_kwh_per_h * hours
    battery = np.maximum(battery_kwh, _TINY)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = taper_cross_soc(params, car_kw, cap_kw)
        to_cross_h = np.where(soc < cross, (cross - soc) * battery / cap_kwh_per_h, 0.0)
        flat_h = np.minimum(to_cross_h, hours)
        start = np.maximum(soc, cross)
        rate_per_h = b * eta * car_kw / battery
        tail = (a / b - start) * battery * -np.expm1(-rate_per_h * (hours - flat_h))
    return np.where(cap_kw > 0, cap_kwh_per_h * flat_h + np.maximum(tail, 0.0), 0.0)


def taper_cross_soc(params: SiteParams, car_kw, cap_kw):
    """SoC at which the car's tapered limit falls to ``cap_kw`` (inf when the taper is flat)."""
    if params.taper_slope == 0:
        return np.full(np.shape(cap_kw), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(car_kw > 0, (params.taper_intercept - cap_kw / car_kw) / params.taper_slope, np.inf)


def plug_limits(params: SiteParams, ev_fields: np.ndarray, port: np.ndarray) -> None:
    """Fill the port-dependent fields of EVs being plugged onto ``port``, in place.

    ``ev_fields`` is (len(EV_FIELDS), E) in ``envs.state.EV_FIELDS`` order: the discharge limit
    becomes the port's where lower, ``charge_cap_kw`` the lower of the car's and the port's
    charge limits, and ``taper_start_soc`` the SoC from which a step at full power can reach the
    taper (below it the car takes ``charge_cap_kw`` all step).
    """
    battery, car_kw, discharge_kw, cap_kw, start = (ev_fields[i] for i in (0, 1, 2, 5, 6))
    np.minimum(discharge_kw, params.port_max_discharge_kw[port], out=discharge_kw)
    np.minimum(car_kw, params.port_max_charge_kw[port], out=cap_kw)
    step_kwh = cap_kw * params.charge_kwh_per_kw_step[port]
    with np.errstate(divide="ignore", invalid="ignore"):
        start[:] = taper_cross_soc(params, car_kw, cap_kw) - step_kwh / np.maximum(battery, _TINY)
    start[np.isnan(start)] = np.inf


_TINY = 1e-12


ROUND_OFF_KW = 1e-9


def _prefix_sum(x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def node_flows(params: SiteParams, power_kw: np.ndarray, node_exo_kw: np.ndarray) -> np.ndarray:
    """Net flow (B, N) into every node: inflexible load - PV of its subtree plus its ports."""
    if params.port_node_incidence is not None:
        return node_exo_kw + power_kw @ params.port_node_incidence
    prefix = _prefix_sum(power_kw)
    return node_exo_kw + prefix[:, params.node_port_hi] - prefix[:, params.node_port_lo]


def project_to_limits(params: SiteParams, power_kw: np.ndarray, node_exo_kw: np.ndarray):
    """Scale port powers bottom-up until every node's flow is within its limits.

    At each node, if the net flow (inflexible load - PV + ports below) exceeds the import limit,
    the charging ports below it are scaled down by one common factor; if it exceeds the export
    limit, the discharging ports are. When even zero charging (or discharging) cannot bring a
    node within its limit, the remainder is returned as violation: the kW beyond any node's limit
    in the final flows, summed over nodes (a parent's scaling can push a child with PV past its
    export limit; that counts too).

    Returns (projected power (B, P), root flow kW (B,), violation kW summed over nodes (B,)).
    """
    flows = node_flows(params, power_kw, node_exo_kw)
    if not ((flows > params.node_import_limit_kw).any() or (flows < params.node_export_floor_kw).any()):
        return power_kw, flows[:, 0], np.zeros(power_kw.shape[0])
    x = power_kw
    for level, slot in zip(params.levels_bottom_up, params.level_port_slot, strict=True):
        lo, hi = params.node_port_lo[level], params.node_port_hi[level]
        pos, neg = split_power(x)
        prefix_pos, prefix_neg = _prefix_sum(pos), _prefix_sum(neg)
        sum_pos = prefix_pos[:, hi] - prefix_pos[:, lo]
        sum_neg = prefix_neg[:, hi] - prefix_neg[:, lo]
        exo = node_exo_kw[:, level]
        import_limit = params.node_import_limit_kw[level]
        export_limit = params.node_export_limit_kw[level]
        flow = exo + sum_pos + sum_neg
        over_import = flow > import_limit
        over_export = flow < -export_limit
        if over_import.any() or over_export.any():
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                keep_pos = np.where(over_import & (sum_pos > 0),
                                    np.clip((import_limit - exo - sum_neg) / sum_pos, 0.0, 1.0), 1.0)
                keep_neg = np.where(over_export & (sum_neg < 0),
                                    np.clip((-export_limit - exo - sum_pos) / sum_neg, 0.0, 1.0), 1.0)
            ones = np.ones((x.shape[0], 1))
            x = (pos * np.concatenate([keep_pos, ones], axis=1)[:, slot]
                 + neg * np.concatenate([keep_neg, ones], axis=1)[:, slot])
    flows = node_flows(params, x, node_exo_kw)
    excess = (np.maximum(flows - params.node_import_limit_kw, 0.0)
              + np.maximum(params.node_export_floor_kw - flows, 0.0))
    excess *= excess > ROUND_OFF_KW
    return x, flows[:, 0], np.add.reduce(excess, axis=1)


def battery_energy_kwh(params: SiteParams, charge_kw: np.ndarray, discharge_kw: np.ndarray) -> np.ndarray:
    """Energy into each battery over one step from grid-side charge (>= 0) and discharge (<= 0) kW."""
    energy = charge_kw * params.charge_kwh_per_kw_step
    energy += discharge_kw * params.discharge_kwh_per_kw_step
    return energy


def split_power(power_kw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(charge >= 0, discharge <= 0) parts of signed port power; arithmetic, no masked select."""
    charge = np.maximum(power_kw, 0.0)
    return charge, power_kw - charge
