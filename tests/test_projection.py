"""The node-limit projection against a linear program: least violation, feasible whenever possible."""

import numpy as np
import pytest
import scipy.optimize
from helpers import ev, make_episode, port_group, term, tiny_site

from envs.core import reset, step
from envs.projection import node_flows, project_to_limits
from envs.site import load_site

TOL_KW = 1e-6


def least_violation_kw(params, request_kw, exo_kw):
    """The LP: ports within [0, request] (same sign), node slacks beyond the limits, least slack."""
    p, n = params.num_ports, params.num_nodes
    below = np.zeros((n, p))
    for port, node in enumerate(params.port_node):
        while node >= 0:
            below[node, port] = 1.0
            node = params.node_parent[node]
    eye = np.eye(n)
    # Variables: port powers, slack over the import limit, slack under the export limit.
    a_ub = np.block([[below, -eye, np.zeros((n, n))], [-below, np.zeros((n, n)), -eye]])
    b_ub = np.concatenate([params.node_import_limit_kw - exo_kw, exo_kw - params.node_export_floor_kw])
    bounds = [(min(r, 0.0), max(r, 0.0)) for r in request_kw] + [(0, None)] * (2 * n)
    cost = np.concatenate([np.zeros(p), np.ones(2 * n)])
    result = scipy.optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert result.status == 0
    return result.fun


def random_tree(rng, v2g: bool):
    nodes = [{"name": "n0", "limit_kw": float(rng.uniform(20, 120)),
              "export_limit_kw": float(rng.uniform(0, 60))}]
    for i in range(1, rng.integers(1, 7)):
        nodes.append({"name": f"n{i}", "parent": f"n{rng.integers(0, i)}",
                      "limit_kw": float(rng.uniform(5, 60)), "export_limit_kw": float(rng.uniform(0, 40))})
    ports = [port_group(f"n{rng.integers(0, len(nodes))}", count=int(rng.integers(1, 4)),
                        max_charge_kw=float(rng.uniform(3, 22)),
                        max_discharge_kw=float(rng.uniform(3, 22)) if v2g else 0.0, name=f"g{g}_")
             for g in range(rng.integers(1, 5))]
    return tiny_site(nodes=nodes, ports=ports)


def random_case(seed, b=64):
    """A random tree, requests (B, P) and subtree inflexible flows (B, N) of load and PV."""
    rng = np.random.default_rng(seed)
    params = random_tree(rng, v2g=seed % 3 != 0)
    n = params.num_nodes
    request = rng.uniform(-1, 1, (b, params.num_ports)) * params.port_max_charge_kw
    if not params.bidirectional:
        request = np.abs(request)
    request[rng.random(request.shape) < 0.2] = 0.0
    load = rng.uniform(0, 20, (b, n)) * (rng.random((b, n)) < 0.5)
    pv = rng.uniform(0, 30, (b, n)) * (rng.random((b, n)) < 0.5)
    exo = np.zeros((b, n))  # subtree sums, from the parent pointers only
    for node in range(n):
        up = node
        while up >= 0:
            exo[:, up] += load[:, node] - pv[:, node]
            up = params.node_parent[up]
    return params, request, exo


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_projection_has_the_least_violation_an_lp_finds(seed):
    params, request, exo = random_case(seed)
    power, site_kw, violation = project_to_limits(params, request, exo)
    assert (np.sign(power) * np.sign(request) >= 0).all(), "a port changed direction"
    assert (np.abs(power) <= np.abs(request) + 1e-12).all(), "a port got more than it asked"
    flows = node_flows(params, power, exo)
    np.testing.assert_allclose(site_kw, flows[:, 0], atol=1e-9)
    lp = np.array([least_violation_kw(params, request[i], exo[i]) for i in range(len(request))])
    np.testing.assert_allclose(violation, lp, atol=TOL_KW)
    assert (violation[lp < TOL_KW] == 0).all()


def test_the_random_cases_need_both_a_feasible_cut_and_a_least_violation():
    cut = unavoidable = 0
    for seed in SEEDS:
        params, request, exo = random_case(seed)
        flows = node_flows(params, request, exo)
        over = ((flows > params.node_import_limit_kw) | (flows < params.node_export_floor_kw)).any(axis=1)
        violation = project_to_limits(params, request, exo)[2]
        cut += int((over & (violation == 0)).sum())
        unavoidable += int((violation > 0).sum())
    assert cut > 100 and unavoidable > 100


def test_requests_within_every_limit_pass_unchanged():
    rng = np.random.default_rng(0)
    params = random_tree(rng, v2g=True)
    request = rng.uniform(-0.01, 0.01, (8, params.num_ports))
    power, _, violation = project_to_limits(params, request, np.zeros((8, params.num_nodes)))
    assert power is request and (violation == 0).all()


def test_a_pv_sub_panel_keeps_charging_when_the_grid_connection_is_overloaded():
    # The office load overloads the grid connection; cutting every charging port alike would
    # push the PV panel past its 10 kW export limit. Cutting only the port outside the panel fits.
    params = tiny_site(
        nodes=[{"name": "grid", "limit_kw": 100},
               {"name": "panel", "parent": "grid", "limit_kw": 60, "export_limit_kw": 10},
               {"name": "office", "parent": "grid", "limit_kw": 500}],
        ports=[port_group("grid", max_charge_kw=30), port_group("panel", max_charge_kw=40)])
    episode = make_episode(params, [ev(max_charge_kw=30, battery_kwh=100, soc=0.1, requested_kwh=80),
                                    ev(max_charge_kw=40, battery_kwh=100, soc=0.1, requested_kwh=80)],
                           pv={"panel": 50.0}, load={"office": 90.0})
    state, terms, info = step(params, reset(params, episode), np.ones((1, 2)))
    assert term(terms, "grid_violation_kwh")[0] == 0
    np.testing.assert_allclose(state.delivered_kwh[0] / (0.9 * 0.25), [20.0, 40.0], rtol=1e-12)
    assert info["site_power_kw"][0] == pytest.approx(100.0, rel=1e-12)


def test_discharge_cut_at_the_grid_connection_leaves_a_loaded_building_within_its_import_limit():
    # Exporting 16 kW breaks the 5 kW export limit (the building's load 14 minus 10 of PV leaves
    # 4 kW of import). Cutting both discharging ports alike would overload the building (limit
    # 10 kW under 14 kW of load); keeping its port discharging at least 4 kW fits every limit.
    params = tiny_site(
        nodes=[{"name": "grid", "limit_kw": 100, "export_limit_kw": 5},
               {"name": "building", "parent": "grid", "limit_kw": 10},
               {"name": "solar", "parent": "grid", "limit_kw": 50}],
        ports=[port_group("grid", max_discharge_kw=10), port_group("building", max_discharge_kw=6)])
    v2g = {"consent": True, "min_soc": 0.1, "soc": 0.8, "requested_kwh": 0.0}
    episode = make_episode(params, [ev(max_discharge_kw=10, **v2g), ev(max_discharge_kw=6, **v2g)],
                           pv={"solar": 10.0}, load={"building": 14.0})
    state, terms, info = step(params, reset(params, episode), -np.ones((1, 2)))
    assert term(terms, "grid_violation_kwh")[0] == 0
    power = state.delivered_kwh[0] * 0.8 / 0.25
    assert power[1] <= -4.0 + 1e-9 and power.sum() == pytest.approx(-9.0, rel=1e-12)
    assert info["site_power_kw"][0] == pytest.approx(-5.0, rel=1e-12)


def test_large_sites_use_prefix_sums_and_agree_with_the_lp():
    params = load_site("city")
    assert params.port_node_incidence is None
    rng = np.random.default_rng(1)
    b = 3
    request = rng.uniform(-0.3, 1, (b, params.num_ports)) * params.port_max_charge_kw
    request = np.where(params.port_max_discharge_kw > 0, request, np.abs(request))
    exo = np.zeros((b, params.num_nodes))
    exo[:, 0] = [0.0, 400.0, -300.0]
    power, _, violation = project_to_limits(params, request, exo)
    lp = np.array([least_violation_kw(params, request[i], exo[i]) for i in range(b)])
    np.testing.assert_allclose(violation, lp, atol=TOL_KW)
    assert (np.abs(power) <= np.abs(request) + 1e-12).all()
