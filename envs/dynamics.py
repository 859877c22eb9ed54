"""Pure pieces of the step: feasible port power, battery update, plug limits (projection: envs.projection).

Every function works on whole batches: arrays (B, P) over envs and ports, (B, N) over nodes.
Port power is grid-side kW, positive when charging.
"""

from __future__ import annotations

import functools

import numpy as np

from envs.projection import ROUND_OFF_KW, node_flows, project_to_limits
from envs.site import SiteParams

__all__ = ["EV_FIELDS", "ROUND_OFF_KW", "TAPER_FIELDS", "available_power", "battery_energy_kwh", "node_flows",
           "plug_limits", "project_to_limits", "split_power", "taper_charge_kw", "taper_energy_kwh",
           "taper_start_soc"]


EV_FIELDS = ("battery_kwh", "ev_max_charge_kw", "ev_max_discharge_kw", "min_soc", "announced_departure_step",
             "charge_cap_kw", "taper_start_soc")
TAPER_FIELDS = EV_FIELDS[-2:]  # set by plug_limits for the port the EV plugs onto
_BATTERY, _CAR, _DISCHARGE, _MIN_SOC, _, _CAP, _START = range(len(EV_FIELDS))


def available_power(params: SiteParams, soc, remaining_kwh, ev, present=None):
    """Grid-side (charge, discharge) kW each port can take this step, both >= 0, as step averages.

    ``ev`` (len(EV_FIELDS), B, P) stacks the fixed data of the EV on each port (0 where empty),
    its ``TAPER_FIELDS`` set by ``plug_limits``. Charge: ``charge_cap_kw``, the lower of the
    port's and the car's limit, until the car's taper bites, then the step average of
    ``taper_charge_kw`` (evaluated only above ``taper_start_soc``, where it can bite within the
    step); at most the room left in the battery and the energy still requested. Discharge: the
    consented limit and the energy above ``min_soc`` (never below SoC 0, whatever ``min_soc``
    says). ``present`` (flat port indices, fractions) names the ports whose EV is there for
    only that fraction of the step: the car's limits count for that time only.
    """
    battery_kwh = ev[_BATTERY]
    room_kwh = np.minimum((1.0 - soc) * battery_kwh, remaining_kwh)
    room_kwh *= params.charge_kw_per_kwh_step
    charge = np.minimum(ev[_CAP], room_kwh, out=room_kwh)
    at = np.flatnonzero(soc > ev[_START])
    if at.size:
        flat = charge.reshape(-1)
        flat[at] = np.minimum(flat[at], _taper_at(params, soc, ev, at))
    np.maximum(charge, 0.0, out=charge)
    if present is not None:
        _present_charge(params, charge, soc, remaining_kwh, ev, *present)
    if not params.bidirectional:
        return charge, np.zeros(charge.shape)
    above_min_kwh = soc - np.maximum(ev[_MIN_SOC], 0.0)
    above_min_kwh *= battery_kwh
    above_min_kwh *= params.discharge_kw_per_kwh_step
    discharge_kw = ev[_DISCHARGE]
    if present is not None:
        at, fraction = present
        discharge_kw = discharge_kw.copy()
        discharge_kw.reshape(-1)[at] *= fraction
    discharge = np.minimum(discharge_kw, above_min_kwh)
    np.maximum(discharge, 0.0, out=discharge)
    return charge, discharge


def _taper_at(params: SiteParams, soc, ev, at, hours=None):
    """``taper_charge_kw`` of the ports at flat indices ``at`` of (B, P) arrays."""
    fields = ev.reshape(len(ev), -1)[:, at]
    port = at % soc.shape[-1] if _uniform_charge_efficiency(params) is None else 0
    return taper_charge_kw(params, soc.reshape(-1)[at], fields[_BATTERY], fields[_CAR], fields[_CAP], port,
                           hours)


def _present_charge(params: SiteParams, charge, soc, remaining_kwh, ev, at, fraction) -> None:
    """Charge (written in place at flat indices ``at``) of EVs there for ``fraction`` of the step."""
    fields = ev.reshape(len(ev), -1)[:, at]
    battery_kwh, cap_kw, start_soc = fields[_BATTERY], fields[_CAP], fields[_START]
    kw = cap_kw * fraction
    tapers = np.isfinite(start_soc)
    if tapers.any():
        kw[tapers] = _taper_at(params, soc, ev, at[tapers], fraction[tapers] * params.dt_hours)
    soc_at = soc.reshape(-1)[at]
    room_kwh = np.minimum((1.0 - soc_at) * battery_kwh, remaining_kwh.reshape(-1)[at])
    np.minimum(kw, room_kwh * params.charge_kw_per_kwh_step[at % soc.shape[-1]], out=kw)
    charge.reshape(-1)[at] = np.maximum(kw, 0.0)


def taper_charge_kw(params: SiteParams, soc, battery_kwh, car_kw, cap_kw, port, hours=None):
    """Step-average grid-side kW of a car at full power for ``hours`` of the step (default all).

    Grid-side, the car takes ``cap_kw`` (the lower of its own and the port's limit) until its own
    limit, tapered linearly as ``car_kw * min(1, a - b * soc)`` (1 at ``taper_knee_soc``,
    ``taper_floor`` at full), falls to ``cap_kw`` at the cross SoC; past it the SoC follows
    ``dsoc/dt = eta * car_kw * (a - b * soc) / battery_kwh``, an exponential approach to
    ``a / b``. Integrated exactly from ``soc``; the battery's room is not applied here. Needs
    positive battery, car and cap and a sloped taper (a finite ``taper_start_soc``); ``port``
    gives each entry's charge efficiency ``eta``.
    """
    hours = params.dt_hours if hours is None else hours
    b = params.taper_slope
    eta = _charge_efficiency(params, port)
    cross_to_end = cap_kw / (b * car_kw)  # SoC from the cross to a / b, where the taper ends
    hours_per_soc = battery_kwh / (eta * cap_kw)
    to_end = params.taper_intercept / b - soc
    flat_h = to_end - cross_to_end
    flat_h *= hours_per_soc
    np.maximum(flat_h, 0.0, out=flat_h)
    np.minimum(flat_h, hours, out=flat_h)
    tail = np.expm1((flat_h - hours) / (hours_per_soc * cross_to_end))
    tail *= np.minimum(to_end, cross_to_end) * hours_per_soc
    flat_h -= tail
    flat_h *= cap_kw * (1.0 / params.dt_hours)
    return flat_h


@functools.lru_cache(maxsize=64)
def _uniform_charge_efficiency(params: SiteParams) -> float | None:
    efficiency = params.port_charge_efficiency
    return float(efficiency[0]) if (efficiency == efficiency[0]).all() else None


def _charge_efficiency(params: SiteParams, port):
    uniform = _uniform_charge_efficiency(params)
    return params.port_charge_efficiency[port] if uniform is None else uniform


def taper_start_soc(params: SiteParams, battery_kwh, car_kw, cap_kw, eta):
    """SoC above which a step at full power reaches the car's taper: one step's worth of SoC at
    ``cap_kw`` below where the tapered limit falls to ``cap_kw`` (inf where it never does: no
    taper, no power, no battery)."""
    a, b = params.taper_intercept, params.taper_slope
    with np.errstate(divide="ignore", invalid="ignore"):
        start = (a - cap_kw / car_kw) / b - eta * cap_kw * params.dt_hours / battery_kwh
    return np.where((cap_kw > 0) & (battery_kwh > 0) & (b > 0), start, np.inf)


def taper_energy_kwh(params: SiteParams, soc, battery_kwh, car_kw, cap_kw, port, hours=None):
    """Energy (kWh into the battery) a car takes at full power within ``hours`` (default: a step),
    from ``soc``, on ``port``: ``taper_charge_kw`` for any arrays (constant power where the car
    has no taper)."""
    hours = params.dt_hours if hours is None else hours
    eta = params.port_charge_efficiency[port]
    flat_kwh = np.where(cap_kw > 0, cap_kw * eta * hours, 0.0)
    if params.taper_slope == 0:
        return flat_kwh
    tapers = np.isfinite(taper_start_soc(params, battery_kwh, car_kw, cap_kw, eta))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kwh = taper_charge_kw(params, soc, battery_kwh, car_kw, cap_kw, port, hours) * eta * params.dt_hours
    return np.where(tapers, kwh, flat_kwh)


def plug_limits(params: SiteParams, ev_fields: np.ndarray, port: np.ndarray) -> None:
    """Fill the port-dependent fields of EVs being plugged onto ``port``, in place.

    ``ev_fields`` is (len(EV_FIELDS), E) in ``EV_FIELDS`` order: the discharge limit
    becomes the port's where lower, and the ``TAPER_FIELDS`` (last) are set for the lower of the
    car's and the port's charge limits and the port's efficiency.
    """
    battery, car_kw, discharge_kw = ev_fields[_BATTERY], ev_fields[_CAR], ev_fields[_DISCHARGE]
    np.minimum(discharge_kw, params.port_max_discharge_kw[port], out=discharge_kw)
    cap_kw = np.minimum(car_kw, params.port_max_charge_kw[port])
    ev_fields[_CAP] = cap_kw
    ev_fields[_START] = taper_start_soc(params, battery, car_kw, cap_kw, params.port_charge_efficiency[port])


def battery_energy_kwh(params: SiteParams, charge_kw: np.ndarray, discharge_kw: np.ndarray) -> np.ndarray:
    """Energy into each battery over one step from grid-side charge (>= 0) and discharge (<= 0) kW."""
    energy = charge_kw * params.charge_kwh_per_kw_step
    energy += discharge_kw * params.discharge_kwh_per_kw_step
    return energy


def split_power(power_kw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(charge >= 0, discharge <= 0) parts of signed port power; arithmetic, no masked select."""
    charge = np.maximum(power_kw, 0.0)
    return charge, power_kw - charge
