"""Single steps whose every number is worked out by hand on tiny sites.

Unless a test says otherwise: dt = 0.25 h, charge efficiency 0.9, discharge efficiency 0.8,
taper from 1 at SoC 0.8 down to 0.1 at full, buy price 0.2, sell price 0.1, tariff 0.3 EUR/kWh,
carbon 0.5 kg/kWh, setpoint 0 kW; EVs have 40 kWh, SoC 0.5, want 20 kWh and take 7 kW.
"""

import numpy as np
import pytest
from helpers import DT_HOURS as DT
from helpers import ETA_C, ETA_D, ev, fine_step_energy_kwh, make_episode, port_group, term, tiny_site

from envs.core import reset, step
from envs.observation import observation_layout, observe
from envs.reward import TERMS

CHARGE_KWH_PER_KW = ETA_C * DT
DISCHARGE_KWH_PER_KW = DT / ETA_D


def approx(value):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def obs_field(params, state, name):
    return observe(params, state)[:, observation_layout(params)[name]]


def rollout(params, episode, actions):
    """Step through ``actions`` (each (B, P) or a scalar for every port) from reset."""
    state = reset(params, episode)
    steps = []
    for action in actions:
        action = np.broadcast_to(np.asarray(action, dtype=np.float64),
                                 (episode.num_envs, params.num_ports))
        state, terms, info = step(params, state, action)
        steps.append((state, terms, info))
    return steps


def single_step(params, episode, action):
    state, terms, info = rollout(params, episode, [action])[0]
    return state, terms[0], {key: value[0] for key, value in info.items()}


def named(terms):
    return {name: terms[i] for i, name in enumerate(TERMS)}


# --- one port, no limits binding -------------------------------------------------------------


def test_plain_charging_step_is_exact():
    params = tiny_site()
    episode = make_episode(params, [ev(departure=6)])
    state0 = reset(params, episode)
    assert state0.max_charge_kw[0, 0] == approx(7.0)
    assert obs_field(params, state0, "occupied")[0, 0] == 1
    assert obs_field(params, state0, "available")[0, 0] == 1
    assert obs_field(params, state0, "soc")[0, 0] == approx(0.5)
    assert obs_field(params, state0, "remaining_kwh")[0, 0] == approx(20.0)
    assert obs_field(params, state0, "hours_to_departure")[0, 0] == approx(6 * DT)
    assert obs_field(params, state0, "max_discharge_kw")[0, 0] == 0
    assert obs_field(params, state0, "v2g_allowed")[0, 0] == 0

    state, terms, info = single_step(params, episode, 0.5)
    power = 3.5
    energy = power * CHARGE_KWH_PER_KW
    assert state.t == 1
    assert state.soc[0, 0] == approx(0.5 + energy / 40)
    assert state.delivered_kwh[0, 0] == approx(energy)
    assert state.remaining_kwh[0, 0] == approx(20 - energy)
    assert info["site_power_kw"] == approx(power)
    assert info["charged_kwh"] == approx(energy)
    assert info["discharged_kwh"] == 0
    assert named(terms) == {
        "energy_cost_eur": approx(0.2 * power * DT),
        "charging_revenue_eur": approx(0.3 * energy),
        "export_revenue_eur": 0,
        "degradation_kwh": approx(energy),
        "unmet_kwh": 0,
        "unmet_at_horizon_kwh": 0,
        "overload_requested_kwh": 0,
        "grid_violation_kwh": 0,
        "peak_increase_kw": approx(power),
        "carbon_kg": approx(0.5 * power * DT),
        "setpoint_error_kwh": approx(power * DT),
    }
    np.testing.assert_array_equal(state.totals[0], terms)
    assert obs_field(params, state, "hours_to_departure")[0, 0] == approx(5 * DT)


@pytest.mark.parametrize("port_kw", [11.0, 5.0, 22.0])
@pytest.mark.parametrize("soc", [0.5, 0.75, 0.8, 0.82, 0.85, 0.9, 0.96, 0.995])
def test_taper_is_integrated_over_the_step(soc, port_kw):
    params = tiny_site(ports=[port_group("grid", max_charge_kw=port_kw)])
    episode = make_episode(params, [ev(soc=soc, battery_kwh=30, max_charge_kw=11, requested_kwh=50)])
    expected_kwh = fine_step_energy_kwh(params, soc, 30, 11, port_kw, ETA_C)
    expected_kw = expected_kwh / CHARGE_KWH_PER_KW
    assert reset(params, episode).max_charge_kw[0, 0] == pytest.approx(expected_kw, rel=1e-7)
    state, _, _ = single_step(params, episode, 1.0)
    assert state.delivered_kwh[0, 0] == pytest.approx(expected_kwh, rel=1e-7)
    assert state.soc[0, 0] == pytest.approx(soc + expected_kwh / 30, abs=1e-8)


def test_taper_over_a_day_of_full_power_steps_matches_the_fine_step_reference():
    params = tiny_site(horizon_steps=16, dt_minutes=30)
    episode = make_episode(params, [ev(soc=0.3, battery_kwh=25, max_charge_kw=11, requested_kwh=50)])
    state = reset(params, episode)
    for _ in range(params.horizon_steps):
        state, _, _ = step(params, state, np.ones((1, 1)))
    expected_kwh = fine_step_energy_kwh(params, 0.3, 25, 11, 11, ETA_C, steps=params.horizon_steps)
    assert state.delivered_kwh[0, 0] == pytest.approx(expected_kwh, rel=1e-7)


def test_port_limit_caps_the_car():
    params = tiny_site()
    state = reset(params, make_episode(params, [ev(max_charge_kw=22)]))
    assert state.max_charge_kw[0, 0] == approx(11.0)


def test_charge_capped_by_remaining_request():
    params = tiny_site()
    episode = make_episode(params, [ev(soc=0.2, requested_kwh=1.0)])
    assert reset(params, episode).max_charge_kw[0, 0] == approx(1.0 / CHARGE_KWH_PER_KW)
    (s1, _, _), (s2, terms2, _) = rollout(params, episode, [1.0, 1.0])
    assert s1.delivered_kwh[0, 0] == approx(1.0)
    assert s1.remaining_kwh[0, 0] == approx(0.0)
    assert s1.soc[0, 0] == approx(0.2 + 1.0 / 40)
    assert s1.max_charge_kw[0, 0] == approx(0.0)
    assert s2.delivered_kwh[0, 0] == approx(1.0)
    assert term(terms2, "charging_revenue_eur")[0] == approx(0.0)


def test_charge_capped_by_battery_room():
    params = tiny_site(battery={"taper_knee_soc": 0.8, "taper_floor": 1.0})  # no taper
    episode = make_episode(params, [ev(battery_kwh=4.0, soc=0.8, requested_kwh=20)])
    room_kw = 0.2 * 4.0 / CHARGE_KWH_PER_KW
    assert room_kw < 7.0
    assert reset(params, episode).max_charge_kw[0, 0] == approx(room_kw)
    state, _, _ = single_step(params, episode, 1.0)
    assert state.soc[0, 0] == approx(1.0)
    assert state.delivered_kwh[0, 0] == approx(0.8)
    assert state.remaining_kwh[0, 0] == approx(19.2)
    assert state.max_charge_kw[0, 0] == approx(0.0)


# --- V2G --------------------------------------------------------------------------------------


def v2g_ev(**fields):
    return ev(**{"max_discharge_kw": 6.0, "consent": True, "min_soc": 0.3, "requested_kwh": 5.0,
                 **fields})


def test_v2g_discharge_step_is_exact():
    params = tiny_site()
    episode = make_episode(params, [v2g_ev()])
    state0 = reset(params, episode)
    assert state0.max_discharge_kw[0, 0] == approx(6.0)
    assert obs_field(params, state0, "v2g_allowed")[0, 0] == 1

    state, terms, info = single_step(params, episode, -1.0)
    energy = -6.0 * DISCHARGE_KWH_PER_KW
    assert state.soc[0, 0] == approx(0.5 + energy / 40)
    assert state.delivered_kwh[0, 0] == approx(energy)
    assert state.remaining_kwh[0, 0] == approx(5.0 - energy)
    assert info["site_power_kw"] == approx(-6.0)
    assert info["discharged_kwh"] == approx(-energy)
    assert info["charged_kwh"] == 0
    assert named(terms) == {
        "energy_cost_eur": 0,
        "charging_revenue_eur": approx(0.3 * energy),
        "export_revenue_eur": approx(0.1 * 6.0 * DT),
        "degradation_kwh": approx(-energy),
        "unmet_kwh": 0,
        "unmet_at_horizon_kwh": 0,
        "overload_requested_kwh": 0,
        "grid_violation_kwh": 0,
        "peak_increase_kw": 0,
        "carbon_kg": 0,
        "setpoint_error_kwh": approx(6.0 * DT),
    }


def test_partial_discharge_action():
    params = tiny_site()
    state, _, info = single_step(params, make_episode(params, [v2g_ev()]), -0.25)
    assert info["site_power_kw"] == approx(-1.5)
    assert state.delivered_kwh[0, 0] == approx(-1.5 * DISCHARGE_KWH_PER_KW)


def test_discharge_stops_at_min_soc():
    params = tiny_site()
    episode = make_episode(params, [v2g_ev(soc=0.31)])
    limit_kw = 0.01 * 40 / DISCHARGE_KWH_PER_KW
    assert reset(params, episode).max_discharge_kw[0, 0] == approx(limit_kw)
    (s1, _, info1), (s2, _, _) = rollout(params, episode, [-1.0, -1.0])
    assert info1["site_power_kw"][0] == approx(-limit_kw)
    assert s1.soc[0, 0] == approx(0.3)
    assert s1.max_discharge_kw[0, 0] == approx(0.0)
    assert s2.soc[0, 0] == approx(0.3)


@pytest.mark.parametrize("min_soc", [-5.0, -0.1])
def test_a_negative_min_soc_never_discharges_below_an_empty_battery(min_soc):
    params = tiny_site(horizon_steps=24)
    episode = make_episode(params, [v2g_ev(soc=0.2, min_soc=min_soc, max_discharge_kw=11.0)])
    state = reset(params, episode)
    assert state.max_discharge_kw[0, 0] == approx(min(11.0, 0.2 * 40 / DISCHARGE_KWH_PER_KW))
    discharged_kwh = 0.0
    for _ in range(params.horizon_steps):
        state, _, info = step(params, state, np.full((1, 1), -1.0))
        discharged_kwh += info["discharged_kwh"][0]
    assert discharged_kwh == pytest.approx(0.2 * 40, rel=1e-12)
    assert state.soc[0, 0] == approx(0.0)
    assert state.max_discharge_kw[0, 0] == 0


def test_no_discharge_below_min_soc_on_arrival():
    params = tiny_site()
    episode = make_episode(params, [v2g_ev(soc=0.2)])
    assert reset(params, episode).max_discharge_kw[0, 0] == 0
    state, _, _ = single_step(params, episode, -1.0)
    assert state.soc[0, 0] == 0.2


def test_no_discharge_without_consent():
    params = tiny_site()
    episode = make_episode(params, [v2g_ev(consent=False)])
    state0 = reset(params, episode)
    assert state0.max_discharge_kw[0, 0] == 0
    assert obs_field(params, state0, "v2g_allowed")[0, 0] == 0
    state, terms, info = single_step(params, episode, -1.0)
    assert state.soc[0, 0] == 0.5
    assert info["site_power_kw"] == 0
    assert term(terms[None], "export_revenue_eur")[0] == 0


def test_no_discharge_on_a_unidirectional_port():
    params = tiny_site(ports=[port_group("grid", max_discharge_kw=0)])
    episode = make_episode(params, [v2g_ev()])
    state0 = reset(params, episode)
    assert state0.max_discharge_kw[0, 0] == 0
    assert obs_field(params, state0, "v2g_allowed")[0, 0] == 0
    state, _, info = single_step(params, episode, -1.0)
    assert state.soc[0, 0] == 0.5
    assert info["site_power_kw"] == 0


def test_port_discharge_limit_caps_the_car():
    params = tiny_site(ports=[port_group("grid", max_discharge_kw=4)])
    assert reset(params, make_episode(params, [v2g_ev()])).max_discharge_kw[0, 0] == approx(4.0)


# --- node limits ------------------------------------------------------------------------------


def transformer_site(transformer_kw, grid_kw=100, ports=None, **grid_fields):
    return tiny_site(
        nodes=[{"name": "grid", "limit_kw": grid_kw, **grid_fields},
               {"name": "transformer", "parent": "grid", "limit_kw": transformer_kw}],
        ports=ports or [port_group("transformer", count=2)],
    )


def test_ports_over_a_transformer_share_one_scale_factor():
    params = transformer_site(10)
    episode = make_episode(params, [ev(max_charge_kw=8), ev(max_charge_kw=4)])
    state, terms, info = single_step(params, episode, 1.0)
    powers = np.array([8.0, 4.0]) * 10 / 12
    np.testing.assert_allclose(state.delivered_kwh[0], powers * CHARGE_KWH_PER_KW, rtol=1e-12)
    assert info["site_power_kw"] == approx(10.0)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(2.0 * DT)
    assert term(terms[None], "grid_violation_kwh")[0] == 0


def test_requests_within_limits_are_not_scaled():
    params = transformer_site(10)
    episode = make_episode(params, [ev(max_charge_kw=8), ev(max_charge_kw=4)])
    state, terms, info = single_step(params, episode, [[1.0, 0.5]])
    np.testing.assert_allclose(state.delivered_kwh[0], np.array([8.0, 2.0]) * CHARGE_KWH_PER_KW,
                               rtol=1e-12)
    assert info["site_power_kw"] == approx(10.0)
    assert term(terms[None], "overload_requested_kwh")[0] == 0


def test_charger_limit_applies_before_the_transformer():
    params = transformer_site(12, ports=[
        port_group("transformer", count=2, name="a", ports_per_charger=2, charger_limit_kw=6),
        port_group("transformer", count=1, name="b"),
    ])
    assert params.node_names == ("grid", "transformer", "a_charger0")
    assert params.port_names == ("b0", "a0", "a1")
    episode = make_episode(params, [ev(), ev(), ev()])
    state, terms, info = single_step(params, episode, 1.0)
    # Charger: 7 + 7 -> 6 kW; then transformer: 7 + 6 = 13 -> 12 kW, one factor 12/13.
    powers = np.array([7.0, 3.0, 3.0]) * 12 / 13
    np.testing.assert_allclose(state.delivered_kwh[0], powers * CHARGE_KWH_PER_KW, rtol=1e-12)
    assert info["site_power_kw"] == approx(12.0)
    assert term(terms[None], "overload_requested_kwh")[0] == approx((21.0 - 12.0) * DT)


def test_building_load_reduces_headroom():
    params = transformer_site(20)
    episode = make_episode(params, [ev(max_charge_kw=4), ev(max_charge_kw=4)], load={"transformer": 15})
    state0 = reset(params, episode)
    np.testing.assert_allclose(obs_field(params, state0, "node_headroom_kw")[0], [85.0, 5.0])
    state, terms, info = single_step(params, episode, 1.0)
    np.testing.assert_allclose(state.delivered_kwh[0], [2.5 * CHARGE_KWH_PER_KW] * 2, rtol=1e-12)
    assert info["site_power_kw"] == approx(20.0)
    assert term(terms[None], "energy_cost_eur")[0] == approx(0.2 * 20 * DT)
    assert term(terms[None], "peak_increase_kw")[0] == approx(20.0)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(3.0 * DT)


def test_pv_export_beyond_the_export_limit_scales_discharge():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 100, "export_limit_kw": 5}])
    episode = make_episode(params, [v2g_ev()], pv={"grid": 3.0})
    state, terms, info = single_step(params, episode, -1.0)
    # -3 kW of PV leaves room for 2 of the 6 kW asked before the 5 kW export limit.
    assert state.delivered_kwh[0, 0] == approx(-2.0 * DISCHARGE_KWH_PER_KW)
    assert info["site_power_kw"] == approx(-5.0)
    assert term(terms[None], "export_revenue_eur")[0] == approx(0.1 * 5.0 * DT)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(4.0 * DT)
    assert term(terms[None], "grid_violation_kwh")[0] == 0


def test_discharge_under_an_overloaded_node_adds_headroom_for_charging():
    params = transformer_site(10)
    episode = make_episode(params, [ev(max_charge_kw=8), v2g_ev(max_discharge_kw=4)],
                           load={"transformer": 8})
    state, terms, info = single_step(params, episode, [[1.0, -1.0]])
    # 8 + 8 - 4 = 12 > 10: only the charging port is cut, to 10 - 8 + 4 = 6 kW.
    assert state.delivered_kwh[0, 0] == approx(6.0 * CHARGE_KWH_PER_KW)
    assert state.delivered_kwh[0, 1] == approx(-4.0 * DISCHARGE_KWH_PER_KW)
    assert info["site_power_kw"] == approx(10.0)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(2.0 * DT)


def test_charging_under_an_exporting_node_adds_room_for_discharge():
    params = tiny_site(nodes=[{"name": "grid", "limit_kw": 100, "export_limit_kw": 5}],
                       ports=[port_group("grid", count=2)])
    episode = make_episode(params, [ev(max_charge_kw=3), v2g_ev()], pv={"grid": 6.0})
    state, terms, info = single_step(params, episode, [[1.0, -1.0]])
    # -6 + 3 - 6 = -9 < -5: only the discharging port is cut, to 5 - 6 + 3 = 2 kW.
    assert state.delivered_kwh[0, 0] == approx(3.0 * CHARGE_KWH_PER_KW)
    assert state.delivered_kwh[0, 1] == approx(-2.0 * DISCHARGE_KWH_PER_KW)
    assert info["site_power_kw"] == approx(-5.0)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(4.0 * DT)


@pytest.mark.parametrize(("grid_kw", "violation_kw"), [(100, 4.0), (12, 4.0 + 2.0)])
def test_grid_violation_when_inflexible_load_alone_exceeds_a_limit(grid_kw, violation_kw):
    params = transformer_site(10, grid_kw=grid_kw, ports=[port_group("transformer")])
    episode = make_episode(params, [ev(max_charge_kw=5)], load={"transformer": 14})
    state, terms, info = single_step(params, episode, 1.0)
    assert state.delivered_kwh[0, 0] == 0
    assert info["site_power_kw"] == approx(14.0)
    # Summed over the nodes whose limit the load alone exceeds.
    assert term(terms[None], "grid_violation_kwh")[0] == approx(violation_kw * DT)
    assert term(terms[None], "overload_requested_kwh")[0] == approx(5.0 * DT)


def test_grid_violation_without_any_ev():
    params = transformer_site(10, ports=[port_group("transformer")])
    _, terms, _ = single_step(params, make_episode(params, [], load={"transformer": 14}), 1.0)
    assert term(terms[None], "grid_violation_kwh")[0] == approx(4.0 * DT)
    assert term(terms[None], "overload_requested_kwh")[0] == 0


def test_parent_scaling_never_hides_a_child_limit_violation():
    # A sub-panel with PV and a 10 kW export limit charges 40 kW: within its own limits (-10 kW).
    # A heavy office load elsewhere overloads the grid connection, whose scaling removes the
    # charging and so pushes the panel to -50 kW of export. Whatever the projection chooses,
    # every kW past a node limit must be counted as grid violation.
    params = tiny_site(
        nodes=[{"name": "grid", "limit_kw": 100},
               {"name": "panel", "parent": "grid", "limit_kw": 60, "export_limit_kw": 10},
               {"name": "office", "parent": "grid", "limit_kw": 500}],
        ports=[port_group("panel", max_charge_kw=50)],
    )
    episode = make_episode(params, [ev(battery_kwh=200, soc=0.2, requested_kwh=100, max_charge_kw=40)],
                           pv={"panel": 50.0}, load={"office": 200.0})
    state, terms, info = single_step(params, episode, 1.0)
    power = state.delivered_kwh[0, 0] / CHARGE_KWH_PER_KW
    panel_flow, grid_flow = power - 50.0, power - 50.0 + 200.0
    assert info["site_power_kw"] == approx(grid_flow)
    excess_kw = max(grid_flow - 100, 0) + max(-10 - panel_flow, 0) + max(panel_flow - 60, 0)
    assert term(terms[None], "grid_violation_kwh")[0] == approx(excess_kw * DT)


# --- departures, the queue and outages --------------------------------------------------------


def test_departure_counts_unmet_energy_and_frees_the_port():
    params = tiny_site()
    episode = make_episode(params, [ev(departure=2, requested_kwh=10)])
    (s1, t1, _), (s2, t2, _) = rollout(params, episode, [1.0, 1.0])
    per_step = 7.0 * CHARGE_KWH_PER_KW
    assert term(t1, "unmet_kwh")[0] == 0
    assert term(t2, "unmet_kwh")[0] == approx(10 - 2 * per_step)
    assert s1.port_ev[0, 0] == 0
    assert s2.port_ev[0, 0] == -1
    assert (s2.soc[0, 0], s2.remaining_kwh[0, 0], s2.delivered_kwh[0, 0]) == (0, 0, 0)
    assert s2.max_charge_kw[0, 0] == 0
    assert obs_field(params, s2, "occupied")[0, 0] == 0
    assert s2.totals[0, TERMS.index("unmet_kwh")] == approx(10 - 2 * per_step)


def test_no_unmet_energy_when_the_request_is_met():
    params = tiny_site()
    episode = make_episode(params, [ev(departure=2, requested_kwh=2.0)])
    _, (_, terms, _) = rollout(params, episode, [1.0, 1.0])
    assert term(terms, "unmet_kwh")[0] == 0


def test_unmet_energy_counted_at_the_real_departure_not_the_announced_one():
    params = tiny_site()
    episode = make_episode(params, [ev(announced=1, departure=3, requested_kwh=10)])
    steps = rollout(params, episode, [1.0, 1.0, 1.0])
    unmet = [term(terms, "unmet_kwh")[0] for _, terms, _ in steps]
    assert unmet == [0, 0, approx(10 - 3 * 7.0 * CHARGE_KWH_PER_KW)]
    assert obs_field(params, steps[1][0], "hours_to_departure")[0, 0] == approx(-DT)


def test_evs_still_plugged_at_the_horizon_count_what_they_lack_then():
    # Port 0: stays past the horizon; port 1: leaves exactly at it; port 2: arrives at it.
    params = tiny_site(ports=[port_group("grid", count=3)])
    n = params.horizon_steps
    episode = make_episode(params, [ev(requested_kwh=10), ev(departure=n, requested_kwh=10),
                                    ev(arrival=n, requested_kwh=10)])
    steps = rollout(params, episode, [[[0.5, 0.5, 0.5]]] * n)
    at_horizon = [term(terms, "unmet_at_horizon_kwh")[0] for _, terms, _ in steps]
    unmet = [term(terms, "unmet_kwh")[0] for _, terms, _ in steps]
    lack_kwh = 10 - n * 3.5 * CHARGE_KWH_PER_KW
    assert at_horizon == [0] * (n - 1) + [approx(lack_kwh)]
    assert unmet == [0] * (n - 1) + [approx(lack_kwh)]
    assert steps[-1][0].totals[0, TERMS.index("unmet_at_horizon_kwh")] == approx(lack_kwh)


def test_unmet_at_the_horizon_is_weighted_in_the_reward():
    params = tiny_site(reward={"unmet_at_horizon_eur_per_kwh": 0.7})
    episode = make_episode(params, [ev(requested_kwh=10)])
    state = rollout(params, episode, [0.0] * params.horizon_steps)[-1][0]
    unweighted = tiny_site()
    assert (state.totals @ params.reward.coefficients() - state.totals @ unweighted.reward.coefficients()
            ) == approx([-0.7 * 10])


def one_port_site(capacity=1, patience_minutes=30):
    return tiny_site(queue={"capacity": capacity, "patience_minutes": patience_minutes})


def test_queued_ev_plugs_when_the_port_frees():
    params = one_port_site()
    episode = make_episode(params, [ev(departure=2), ev(arrival=1, soc=0.3, requested_kwh=12)])
    (s1, _, i1), (s2, _, i2), (s3, _, _) = rollout(params, episode, [1.0] * 3)
    assert s1.port_ev[0, 0] == 0
    assert obs_field(params, s1, "queue_length")[0, 0] == 1
    assert i1["wait_hours"][0] == 0
    assert s2.port_ev[0, 0] == 1
    assert obs_field(params, s2, "queue_length")[0, 0] == 0
    assert i2["wait_hours"][0] == approx(1 * DT)
    assert s2.soc[0, 0] == approx(0.3)
    assert s2.remaining_kwh[0, 0] == approx(12.0)
    assert s2.delivered_kwh[0, 0] == 0
    assert s3.delivered_kwh[0, 0] == approx(7.0 * CHARGE_KWH_PER_KW)


def test_arrival_turned_away_when_the_queue_is_full():
    params = one_port_site(capacity=1)
    episode = make_episode(params, [ev(), ev(arrival=1), ev(arrival=1)])
    steps = rollout(params, episode, [1.0] * 6)
    assert steps[0][2]["turned_away"][0] == 1
    assert sum(info["turned_away"][0] for _, _, info in steps) == 1
    assert obs_field(params, steps[0][0], "queue_length")[0, 0] == 1
    assert all(2 not in state.port_ev[0] for state, _, _ in steps)


@pytest.mark.parametrize(("blocker_departure", "plugged"), [(3, True), (4, False)])
def test_queued_ev_abandons_after_its_patience(blocker_departure, plugged):
    params = one_port_site(patience_minutes=30)  # 2 steps
    episode = make_episode(params, [ev(departure=blocker_departure), ev(arrival=1)])
    steps = rollout(params, episode, [1.0] * 5)
    state, _, info = steps[blocker_departure - 1]
    if plugged:
        assert state.port_ev[0, 0] == 1
        assert info["abandoned"][0] == 0
        assert info["wait_hours"][0] == approx(2 * DT)
    else:
        assert state.port_ev[0, 0] == -1
        assert info["abandoned"][0] == 1
        assert info["wait_hours"][0] == approx(3 * DT)
        assert all(1 not in s.port_ev[0] for s, _, _ in steps)
    assert sum(i["abandoned"][0] for _, _, i in steps) == (0 if plugged else 1)


def test_outage_displaces_the_ev_which_keeps_its_charge():
    params = one_port_site()
    down = np.zeros((params.horizon_steps + 1, 1), dtype=bool)
    down[2:4, 0] = True
    episode = make_episode(params, [ev()], port_down=down)
    steps = rollout(params, episode, [1.0] * 5)
    per_step = 7.0 * CHARGE_KWH_PER_KW
    s2, t2 = steps[1][0], steps[2][1]
    assert s2.port_ev[0, 0] == -1
    assert obs_field(params, s2, "available")[0, 0] == 0
    assert obs_field(params, s2, "occupied")[0, 0] == 0
    assert obs_field(params, s2, "queue_length")[0, 0] == 1
    assert s2.ev_soc[0, 0] == approx(0.5 + 2 * per_step / 40)
    assert s2.ev_delivered_kwh[0, 0] == approx(2 * per_step)
    assert term(t2, "charging_revenue_eur")[0] == 0
    assert term(t2, "unmet_kwh")[0] == 0
    s4, _, i4 = steps[3]
    assert s4.port_ev[0, 0] == 0
    assert obs_field(params, s4, "available")[0, 0] == 1
    assert i4["wait_hours"][0] == approx(2 * DT)
    assert s4.soc[0, 0] == approx(0.5 + 2 * per_step / 40)
    assert s4.delivered_kwh[0, 0] == approx(2 * per_step)
    assert s4.remaining_kwh[0, 0] == approx(20 - 2 * per_step)
    assert steps[4][0].delivered_kwh[0, 0] == approx(3 * per_step)


def test_a_failed_port_takes_no_ev():
    params = tiny_site(ports=[port_group("grid", count=2)])
    down = np.zeros((params.horizon_steps + 1, 2), dtype=bool)
    down[:2, 0] = True
    episode = make_episode(params, [ev()], port_down=down)
    state0 = reset(params, episode)
    np.testing.assert_array_equal(state0.port_ev[0], [-1, 0])
    np.testing.assert_array_equal(obs_field(params, state0, "available")[0], [0, 1])
    state, _, info = single_step(params, episode, 1.0)
    assert state.delivered_kwh[0, 1] == approx(7.0 * CHARGE_KWH_PER_KW)
    assert info["site_power_kw"] == approx(7.0)


# --- demand charge, setpoint, carbon ----------------------------------------------------------


def test_peak_increase_counts_only_new_peaks():
    params = tiny_site()
    load = np.zeros(params.horizon_steps + params.forecast_steps + 1)
    load[2:] = 2.0
    episode = make_episode(params, [ev()], load={"grid": load})
    steps = rollout(params, episode, [1.0, 0.5, 1.0, 0.0])
    peaks = [term(terms, "peak_increase_kw")[0] for _, terms, _ in steps]
    assert peaks == [approx(7.0), 0, approx(2.0), 0]
    assert steps[-1][0].peak_import_kw[0] == approx(9.0)
    assert steps[-1][0].totals[0, TERMS.index("peak_increase_kw")] == approx(9.0)


def test_export_never_raises_the_peak():
    params = tiny_site()
    _, terms, _ = single_step(params, make_episode(params, [v2g_ev()]), -1.0)
    assert term(terms[None], "peak_increase_kw")[0] == 0


@pytest.mark.parametrize(("action", "site_kw"), [(1.0, 7.0), (-1.0, -6.0), (0.0, 0.0)])
def test_setpoint_error_and_carbon(action, site_kw):
    params = tiny_site()
    episode = make_episode(params, [v2g_ev(requested_kwh=20)], setpoint=5.0, carbon=0.4)
    _, terms, info = single_step(params, episode, action)
    assert info["site_power_kw"] == approx(site_kw)
    assert term(terms[None], "setpoint_error_kwh")[0] == approx(abs(site_kw - 5.0) * DT)
    assert term(terms[None], "carbon_kg")[0] == approx(0.4 * max(site_kw, 0.0) * DT)


# --- the action ------------------------------------------------------------------------------


def test_out_of_range_actions_are_clipped_and_counted():
    params = tiny_site(ports=[port_group("grid", count=2)])
    episode = make_episode(params, [ev(), v2g_ev()])
    clipped_state, clipped_terms, info = single_step(params, episode, [[3.0, -2.0]])
    state, terms, _ = single_step(params, episode, [[1.0, -1.0]])
    np.testing.assert_array_equal(clipped_state.soc, state.soc)
    np.testing.assert_array_equal(clipped_terms, terms)
    assert info["action_clipped"] == 2


def test_float32_actions_act_like_their_float64_values():
    # Gymnasium's Box(-1, 1, float32) hands the core float32 actions; the physics stays float64.
    params = tiny_site(ports=[port_group("grid", count=2)])
    episode = make_episode(params, [ev(battery_kwh=4.0, soc=0.8), ev(max_charge_kw=7.3)])
    action = np.array([[1.0, 0.7]], dtype=np.float32)
    state = reset(params, episode)
    low, terms_low, _ = step(params, state, action)
    high, terms_high, _ = step(params, state, action.astype(np.float64))
    for name in ("soc", "delivered_kwh", "remaining_kwh", "max_charge_kw"):
        np.testing.assert_allclose(getattr(low, name), getattr(high, name), rtol=1e-12, atol=0, err_msg=name)
    np.testing.assert_allclose(terms_low, terms_high, rtol=1e-12, atol=0)
    assert low.delivered_kwh[0, 0] <= 0.8 + 1e-12 and low.remaining_kwh[0, 0] >= 19.2 - 1e-12


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_action_is_refused(bad):
    params = tiny_site()
    state = reset(params, make_episode(params, [ev()]))
    with pytest.raises(ValueError, match="env 0, port 0"):
        step(params, state, np.array([[bad]]))


def test_wrong_action_shape_is_refused():
    params = tiny_site()
    state = reset(params, make_episode(params, [ev()]))
    with pytest.raises(ValueError, match="shape"):
        step(params, state, np.zeros((1, 2)))


def test_no_step_past_the_horizon():
    params = tiny_site(horizon_steps=2)
    state = reset(params, make_episode(params, [ev()]))
    for _ in range(2):
        state, _, _ = step(params, state, np.ones((1, 1)))
    with pytest.raises(RuntimeError, match="horizon"):
        step(params, state, np.ones((1, 1)))


def test_a_displaced_ev_that_gives_up_in_the_queue_counts_its_unmet_energy():
    params = one_port_site(capacity=5, patience_minutes=15)
    down = np.zeros((params.horizon_steps + 1, 1), dtype=bool)
    down[2:6, 0] = True
    episode = make_episode(params, [ev(requested_kwh=20)], port_down=down)
    steps = rollout(params, episode, [1.0] * 5)
    per_step = 7.0 * CHARGE_KWH_PER_KW
    unmet = [term(terms, "unmet_kwh")[0] for _, terms, _ in steps]
    assert unmet == [0, 0, 0, approx(20 - 2 * per_step), 0]
    assert steps[3][2]["abandoned"][0] == 1
    assert steps[-1][0].totals[0, TERMS.index("unmet_kwh")] == approx(20 - 2 * per_step)
