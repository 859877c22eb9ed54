"""Pure pieces of the step: feasible port power, node projection, battery update, plug events.

Every function works on whole batches: arrays (B, P) over envs and ports, (B, N) over nodes.
Port power is grid-side kW, positive when charging.
"""

from __future__ import annotations

import numpy as np

from envs.site import SiteParams


def available_power(params: SiteParams, soc, battery_kwh, remaining_kwh, ev_max_charge_kw,
                    ev_max_discharge_kw, min_soc):
    """Grid-side (charge, discharge) kW each port can take this step, both >= 0.

    Charge: the port limit, the car's limit tapered linearly from 1 at ``taper_knee_soc`` to
    ``taper_floor`` at full, the room left in the battery, and the energy still requested.
    Discharge: the consented limit and the energy above ``min_soc`` (never below SoC 0, whatever
    ``min_soc`` says).
    """
    taper = np.minimum(params.taper_intercept - params.taper_slope * soc, 1.0)
    taper *= ev_max_charge_kw
    charge = np.minimum(taper, params.port_max_charge_kw)
    room_kwh = np.minimum((1.0 - soc) * battery_kwh, remaining_kwh)
    room_kwh *= params.charge_kw_per_kwh_step
    np.minimum(charge, room_kwh, out=charge)
    np.maximum(charge, 0.0, out=charge)
    if not params.bidirectional:
        return charge, np.zeros(charge.shape)
    above_min_kwh = soc - np.maximum(min_soc, 0.0)
    above_min_kwh *= battery_kwh
    above_min_kwh *= params.discharge_kw_per_kwh_step
    discharge = np.minimum(ev_max_discharge_kw, above_min_kwh)
    np.maximum(discharge, 0.0, out=discharge)
    return charge, discharge


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
