"""Invariants over whole rollouts of random small sites under random actions.

The projected port powers are recorded from the step (a pass-through wrapper around the
projection) and every consequence is recomputed here independently: node flows from an ancestor
matrix built by walking parents, battery energy from the efficiencies, unmet energy at departure.
"""

import math
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs.core
from envs.core import reset, step
from envs.dynamics import project_to_limits
from envs.generators import generator_for
from envs.observation import observation_bounds, observe
from envs.reward import TERM_INDEX, TERMS
from envs.site import load_site

TOL = 1e-9
NUM_ENVS = 3


def limit(low=4.0, high=80.0):
    return st.floats(low, high).map(lambda x: round(x, 2))


@st.composite
def site_specs(draw):
    levels = draw(st.integers(1, 3))
    nodes = [{"name": "n0", "limit_kw": draw(limit(30, 150))}]
    depth = {"n0": 0}
    for i in range(1, draw(st.integers(0, 4)) + 1 if levels > 1 else 1):
        parent = draw(st.sampled_from([n for n, d in depth.items() if d < levels - 1]))
        nodes.append({"name": f"n{i}", "parent": parent, "limit_kw": draw(limit())})
        depth[f"n{i}"] = depth[parent] + 1
    for node in nodes:
        if draw(st.booleans()):
            node["export_limit_kw"] = draw(limit(0.0, node["limit_kw"]))
    names = [node["name"] for node in nodes]
    ports = []
    for g in range(draw(st.integers(1, 3))):
        group = {"name": f"g{g}_", "node": draw(st.sampled_from(names)), "count": draw(st.integers(1, 3)),
                 "max_charge_kw": draw(limit(3, 22)), "charge_efficiency": draw(st.floats(0.8, 1.0))}
        if draw(st.sampled_from([False, True, True])):
            group["max_discharge_kw"] = draw(limit(3, 22))
            group["discharge_efficiency"] = draw(st.floats(0.8, 1.0))
        if draw(st.booleans()):
            group["charger_limit_kw"] = draw(limit(3, 30))
            group["ports_per_charger"] = draw(st.integers(1, 2))
        ports.append(group)
    dt_minutes = draw(st.sampled_from([15, 30, 60]))
    scenario = {
        "sessions_per_day": draw(st.floats(5, 80)),
        "dwell_mean_hours": draw(st.floats(0.5, 6)),
        "energy_mean_kwh": draw(st.floats(2, 30)),
        "v2g_consent_share": draw(st.floats(0.3, 1)),
        "min_soc": draw(st.floats(0, 0.5)),
        "soc_arrival_range": (0.02, 0.98),
        "peak_hours": [draw(st.floats(6, 14))],
        "peak_widths_hours": [draw(st.floats(0.5, 4))],
        "peak_weights": [1.0],
        "fleet": [{"battery_kwh": draw(limit(5, 80)), "max_charge_kw": draw(limit(2, 25)),
                   "max_discharge_kw": draw(st.sampled_from([5.0, 11.0])), "share": 1.0},
                  {"battery_kwh": draw(limit(5, 80)), "max_charge_kw": draw(limit(2, 25)),
                   "max_discharge_kw": draw(st.sampled_from([0.0, 7.0])), "share": 0.5}],
        "loads": [{"node": draw(st.sampled_from(names)), "base_kw": draw(st.floats(0, 15)),
                   "peak_kw": draw(st.floats(0, 40))} for _ in range(draw(st.integers(0, 2)))],
        "pv": [{"node": draw(st.sampled_from(names)), "peak_kw": draw(st.floats(0, 40))}
               for _ in range(draw(st.integers(0, 2)))],
        "failure_rate_per_day": draw(st.sampled_from([0.0, 0.0, 8.0])),
        "repair_hours": 1.0,
        "weekday": draw(st.integers(0, 6)),
    }
    return {
        "name": "random",
        "dt_minutes": dt_minutes,
        "horizon_steps": draw(st.integers(4, 20)),
        "start_hour": draw(st.sampled_from([0, 6, 9, 12])),
        "forecast_steps": draw(st.integers(0, 4)),
        "nodes": nodes,
        "ports": ports,
        "battery": {"taper_knee_soc": draw(st.floats(0.5, 0.95)), "taper_floor": draw(st.floats(0.05, 1))},
        "queue": {"capacity": draw(st.integers(0, 3)),
                  "patience_minutes": draw(st.sampled_from([0, 30, 60]))},
        "scenario": scenario,
    }


def ancestor_matrix(params):
    """(N, N) with [m, n] = 1 when n is m or one of its ancestors, from the parent pointers only."""
    n = params.num_nodes
    matrix = np.zeros((n, n))
    for m in range(n):
        node = m
        while node >= 0:
            matrix[m, node] = 1.0
            node = params.node_parent[node]
    return matrix


class Recorder:
    """Pass-through projection that keeps a copy of the projected port powers."""

    def __init__(self):
        self.power = None

    def __call__(self, params, power_kw, node_exo_kw):
        result = project_to_limits(params, power_kw, node_exo_kw)
        self.power = np.array(result[0], dtype=np.float64)
        return result


def draw_actions(rng, shape):
    actions = rng.uniform(-1.2, 1.2, shape)
    special = rng.random(shape)
    actions[special < 0.15] = 0.0
    actions[(special >= 0.15) & (special < 0.3)] = 1.0
    actions[(special >= 0.3) & (special < 0.4)] = -1.0
    return actions


class Rollout:
    """What the test tracks independently of the core over one rollout."""

    def __init__(self, params, episode):
        self.params, self.episode = params, episode
        self.ancestors = ancestor_matrix(params)
        self.exo = episode.node_load_kw - episode.node_pv_kw
        self.low, self.high = observation_bounds(params)
        b, k = episode.ev_valid.shape
        self.term_sum = np.zeros((b, len(TERMS)))
        self.net_energy = np.zeros(b)
        self.departed_delivered = np.zeros(b)
        self.departed = np.zeros((b, k), dtype=bool)
        self.peak = np.zeros(b)

    def check_step(self, t, before, action, power, state, terms, info):
        params, dt = self.params, self.params.dt_hours
        fraction = np.clip(action, -1, 1)
        requested = fraction * np.where(fraction > 0, before.max_charge_kw, before.max_discharge_kw)
        flows = self.exo[:, t] @ self.ancestors + power @ self.ancestors[params.port_node]
        self.check_projection(before, requested, power, flows, terms, info)
        energy = np.where(power > 0, power * params.port_charge_efficiency * dt,
                          power * dt / params.port_discharge_efficiency)
        self.check_terms(t, flows[:, 0], energy, terms, info)
        self.check_batteries(t, before, state, energy, terms)
        self.net_energy += energy.sum(axis=1)
        self.term_sum += terms
        check_state(params, state)
        check_observation(params, state, self.low, self.high)

    def check_projection(self, before, requested, power, flows, terms, info):
        """Powers inside the available power with the action's sign; node limits hold unless
        counted as violation; any cut leaves a node above the port at its limit."""
        params, dt = self.params, self.params.dt_hours
        assert (power[~before.occupied] == 0).all()
        assert (power <= np.maximum(requested, 0) + TOL).all()
        assert (power >= np.minimum(requested, 0) - TOL).all()
        np.testing.assert_allclose(info["site_power_kw"], flows[:, 0], rtol=0, atol=TOL)
        over_import = flows - params.node_import_limit_kw
        over_export = -params.node_export_limit_kw - flows
        excess = np.maximum(over_import, 0) + np.maximum(over_export, 0)
        np.testing.assert_allclose(terms[:, TERM_INDEX["grid_violation_kwh"]], excess.sum(axis=1) * dt,
                                   rtol=0, atol=10 * TOL, err_msg=f"flows {flows}")  # core drops round-off
        np.testing.assert_allclose(terms[:, TERM_INDEX["overload_requested_kwh"]],
                                   np.abs(requested - power).sum(axis=1) * dt, rtol=0, atol=TOL)
        port_ancestors = self.ancestors[params.port_node].astype(bool)  # (P, N)
        at_import = (over_import >= -TOL)[:, None, :] & port_ancestors
        at_export = (over_export >= -TOL)[:, None, :] & port_ancestors
        cut_charge = (requested > 0) & (power < requested - TOL)
        cut_discharge = (requested < 0) & (power > requested + TOL)
        assert at_import.any(axis=2)[cut_charge].all(), "charge cut below every limit"
        assert at_export.any(axis=2)[cut_discharge].all(), "discharge cut below every limit"

    def check_terms(self, t, site_kw, energy, terms, info):
        episode, dt = self.episode, self.params.dt_hours
        charged, discharged = np.maximum(energy, 0).sum(axis=1), np.maximum(-energy, 0).sum(axis=1)
        np.testing.assert_allclose(info["charged_kwh"], charged, rtol=0, atol=TOL)
        np.testing.assert_allclose(info["discharged_kwh"], discharged, rtol=0, atol=TOL)
        imported, exported = np.maximum(site_kw, 0) * dt, np.maximum(-site_kw, 0) * dt
        peak = np.maximum(self.peak, site_kw)
        expected = {
            "energy_cost_eur": episode.price_buy_eur_kwh[:, t] * imported,
            "charging_revenue_eur": episode.tariff_eur_kwh[:, t] * (charged - discharged),
            "export_revenue_eur": episode.price_sell_eur_kwh[:, t] * exported,
            "degradation_kwh": charged + discharged,
            "peak_increase_kw": peak - self.peak,
            "carbon_kg": episode.carbon_kg_kwh[:, t] * imported,
            "setpoint_error_kwh": np.abs(site_kw - episode.setpoint_kw[:, t]) * dt,
        }
        for name, value in expected.items():
            np.testing.assert_allclose(terms[:, TERM_INDEX[name]], value, rtol=1e-12, atol=TOL, err_msg=name)
        self.peak = peak
        assert np.isfinite(terms).all()
        billed = TERM_INDEX["charging_revenue_eur"]
        assert (np.delete(terms, billed, axis=1) >= 0).all(), terms

    def check_batteries(self, t, before, state, energy, terms):
        """Energy reaches the EV that stays, the one that leaves (unmet) and the one displaced."""
        episode = self.episode
        stayed = before.occupied & (state.port_ev == before.port_ev)
        battery = np.maximum(before.battery_kwh, 1e-12)
        np.testing.assert_allclose(state.delivered_kwh[stayed], (before.delivered_kwh + energy)[stayed],
                                   atol=TOL)
        np.testing.assert_allclose(state.remaining_kwh[stayed], (before.remaining_kwh - energy)[stayed],
                                   atol=TOL)
        np.testing.assert_allclose(state.soc[stayed], (before.soc + energy / battery)[stayed], atol=TOL)
        floor = np.minimum(before.soc, before.min_soc)
        assert (state.soc[stayed] >= floor[stayed] - TOL).all(), "discharged below min SoC"

        rows = np.arange(episode.num_envs)[:, None]
        ev = np.maximum(before.port_ev, 0)
        leaving = before.occupied & (episode.ev_departure_step[rows, ev] == t + 1)
        unmet = np.where(leaving, np.maximum(before.remaining_kwh - energy, 0), 0).sum(axis=1)
        schedule = state.schedule
        gave_up = slice(schedule.gave_up_offsets[t + 1], schedule.gave_up_offsets[t + 2])
        env_i, ev_i = schedule.gave_up_env[gave_up], schedule.gave_up_ev[gave_up]
        assert (before.port_ev[env_i] != ev_i[:, None]).all(), "an EV gave up from a port"
        left = episode.ev_requested_kwh[env_i, ev_i] - before.ev_delivered_kwh[env_i, ev_i]
        np.add.at(unmet, env_i, np.maximum(left, 0))
        np.testing.assert_allclose(terms[:, TERM_INDEX["unmet_kwh"]], unmet, rtol=0, atol=TOL)
        self.departed_delivered += np.where(leaving, before.delivered_kwh + energy, 0).sum(axis=1)
        env_i, port_i = np.nonzero(leaving)
        self.departed[env_i, before.port_ev[env_i, port_i]] = True

        displaced = np.zeros_like(leaving)
        if episode.port_down is not None:
            displaced = before.occupied & ~leaving & episode.port_down[:, t + 1]
            env_i, port_i = np.nonzero(displaced)
            ev_i = before.port_ev[env_i, port_i]
            np.testing.assert_allclose(state.ev_delivered_kwh[env_i, ev_i],
                                       (before.delivered_kwh + energy)[env_i, port_i], atol=TOL)
            np.testing.assert_allclose(state.ev_soc[env_i, ev_i],
                                       (before.soc + energy / battery)[env_i, port_i], atol=TOL)
        assert (stayed | leaving | displaced | ~before.occupied).all()

    def check_end(self, state):
        np.testing.assert_allclose(state.totals, self.term_sum, rtol=1e-12, atol=TOL)
        # Energy balance: what flowed into batteries is what the EVs hold as delivered energy.
        on_port = np.zeros(self.episode.ev_valid.shape, dtype=bool)
        env_i, port_i = np.nonzero(state.occupied)
        on_port[env_i, state.port_ev[env_i, port_i]] = True
        waiting = np.where(on_port | self.departed, 0, state.ev_delivered_kwh).sum(axis=1)
        held = state.delivered_kwh.sum(axis=1) + waiting
        np.testing.assert_allclose(self.net_energy, self.departed_delivered + held, rtol=0, atol=1e-8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=site_specs(), seed=st.integers(0, 2**32 - 1))
def test_rollout_invariants(spec, seed):
    params = load_site(spec)
    rng = np.random.default_rng(seed)
    episode = generator_for(params).sample(params, rng, NUM_ENVS)
    assert (episode.price_buy_eur_kwh >= 0).all() and (episode.price_sell_eur_kwh >= 0).all()
    rollout = Rollout(params, episode)
    recorder = Recorder()
    state = reset(params, episode)
    check_state(params, state)
    check_observation(params, state, rollout.low, rollout.high)
    with mock.patch.object(envs.core, "project_to_limits", recorder):
        for t in range(params.horizon_steps):
            action = draw_actions(rng, (NUM_ENVS, params.num_ports))
            before, recorder.power = state, None
            state, terms, info = step(params, before, action)
            assert recorder.power is not None, "the step no longer calls envs.core.project_to_limits"
            rollout.check_step(t, before, action, recorder.power, state, terms, info)
    rollout.check_end(state)


def full_power_kwh(params, soc, battery, car_kw, cap_kw, eta):
    """Battery kWh of one step at full power: ``cap_kw`` until the car's linear taper reaches it,
    then the exponential approach to where the taper would reach zero; one EV at a time."""
    knee, floor, hours = params.taper_knee_soc, params.taper_floor, params.dt_hours
    if cap_kw <= 0:
        return 0.0
    if floor == 1.0:
        return eta * cap_kw * hours
    q = (1.0 - floor) / (1.0 - knee)  # taper lost per unit of SoC past the knee
    cross = knee + (1.0 - cap_kw / car_kw) / q
    flat_h = min(max(cross - soc, 0.0) * battery / (eta * cap_kw), hours)
    start = max(soc, cross)
    asymptote = knee + 1.0 / q
    tail_share = -math.expm1(-eta * car_kw * q * (hours - flat_h) / battery)
    return eta * cap_kw * flat_h + (asymptote - start) * battery * tail_share


def available_power(params, episode, env_i, port_i, ev_i, soc, remaining):
    """(charge, discharge) kW the port can take, from the episode's EV data and the site."""
    dt = params.dt_hours
    eta_c, eta_d = params.port_charge_efficiency[port_i], params.port_discharge_efficiency[port_i]
    battery = episode.ev_battery_kwh[env_i, ev_i]
    car_kw = episode.ev_max_charge_kw[env_i, ev_i]
    cap_kw = np.minimum(params.port_max_charge_kw[port_i], car_kw)
    taper_kwh = np.array([full_power_kwh(params, *args)
                          for args in zip(soc, battery, car_kw, cap_kw, eta_c, strict=True)])
    room_kwh = np.minimum.reduce([(1 - soc) * battery, remaining, taper_kwh.reshape(soc.shape)])
    charge = room_kwh / (eta_c * dt)
    car_discharge = episode.ev_max_discharge_kw[env_i, ev_i] * episode.ev_v2g_consent[env_i, ev_i]
    min_soc = np.maximum(episode.ev_min_soc[env_i, ev_i], 0.0)
    discharge = np.minimum.reduce([params.port_max_discharge_kw[port_i], car_discharge,
                                   (soc - min_soc) * battery * eta_d / dt])
    return np.maximum(charge, 0), np.maximum(discharge, 0)


def check_state(params, state):
    episode, t = state.episode, state.t
    occupied = state.occupied
    assert ((state.soc >= 0) & (state.soc <= 1)).all()
    assert (state.max_charge_kw[~occupied] == 0).all() and (state.max_discharge_kw[~occupied] == 0).all()
    if episode.port_down is not None:
        assert not (occupied & episode.port_down[:, t]).any()
    env_i, port_i = np.nonzero(occupied)
    ev_i = state.port_ev[env_i, port_i]
    pairs = env_i * episode.max_evs + ev_i
    assert len(np.unique(pairs)) == len(pairs), "an EV sits on two ports"
    assert episode.ev_valid[env_i, ev_i].all()
    assert (episode.ev_arrival_step[env_i, ev_i] <= t).all()
    assert (episode.ev_departure_step[env_i, ev_i] > t).all()
    soc, remaining, delivered = (
        x[env_i, port_i] for x in (state.soc, state.remaining_kwh, state.delivered_kwh))
    battery = episode.ev_battery_kwh[env_i, ev_i]
    np.testing.assert_array_equal(state.battery_kwh[env_i, port_i], battery)
    np.testing.assert_allclose(remaining + delivered, episode.ev_requested_kwh[env_i, ev_i], atol=TOL)
    assert (remaining >= -TOL).all(), "charged beyond the request"
    np.testing.assert_allclose(delivered, (soc - episode.ev_soc_arrival[env_i, ev_i]) * battery, atol=1e-8)
    charge, discharge = available_power(params, episode, env_i, port_i, ev_i, soc, remaining)
    np.testing.assert_allclose(state.max_charge_kw[env_i, port_i], charge, atol=TOL)
    np.testing.assert_allclose(state.max_discharge_kw[env_i, port_i], discharge, atol=TOL)


def check_observation(params, state, low, high):
    obs = observe(params, state)
    assert obs.dtype == np.float32
    assert np.isfinite(obs).all()
    assert (obs >= low).all() and (obs <= high).all()
