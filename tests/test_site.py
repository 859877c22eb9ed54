"""Site loading: presets, validation messages that name the field, and the depth-first layout."""

import copy
from importlib import resources

import numpy as np
import pytest
import yaml
from helpers import assert_same, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

import envs.limits
from envs.core import reset, step
from envs.errors import ConfigError
from envs.generators import generator_for
from envs.site import SiteError, SiteParams, builtin_sites, load_site

BASE = {
    "name": "broken",
    "nodes": [{"name": "grid", "limit_kw": 100}, {"name": "t", "parent": "grid", "limit_kw": 50}],
    "ports": [{"node": "t", "max_charge_kw": 7}],
}


def test_presets_are_listed():
    assert {"caltech", "v2g_workplace"} <= set(builtin_sites())


@pytest.mark.parametrize("name", builtin_sites())
def test_every_preset_loads_samples_and_steps(name):
    params = load_site(name)
    assert isinstance(params, SiteParams) and params.name == name
    assert params.num_ports > 0 and params.node_parent[0] == -1
    episode = generator_for(params).sample(params, np.random.default_rng(0), 2)
    episode.check(params)
    state = reset(params, episode)
    state, terms, _ = step(params, state, np.ones((2, params.num_ports)))
    assert state.t == 1 and np.isfinite(terms).all()


def test_preset_contents():
    caltech = load_site("caltech")
    assert caltech.num_ports == 54 and caltech.node_names == ("grid", "transformer")
    np.testing.assert_array_equal(caltech.node_import_limit_kw, [300, 150])
    np.testing.assert_array_equal(caltech.port_node, np.ones(54))
    assert caltech.dt_hours == 0.25 and caltech.horizon_steps == 96
    v2g = load_site("v2g_workplace")
    assert v2g.num_ports == 20 and v2g.num_nodes == 4 + 10
    chargers = [i for i, name in enumerate(v2g.node_names) if "_charger" in name]
    assert len(chargers) == 10
    assert (v2g.node_parent[chargers] == v2g.node_index("ev_panel")).all()
    np.testing.assert_array_equal(v2g.node_import_limit_kw[chargers], 22)
    assert v2g.node_export_limit_kw[0] == 100
    np.testing.assert_array_equal(np.bincount(v2g.port_node)[chargers], 2)
    np.testing.assert_array_equal(v2g.port_max_discharge_kw, 11)
    assert v2g.reward.demand_charge_eur_per_kw == 0.2
    assert v2g.queue_patience_steps == 2 and v2g.queue_capacity == 5


def with_change(path, value):
    """BASE with ``value`` put at ``path`` (a tuple of keys and indices); DELETE removes it."""
    spec = copy.deepcopy(BASE)
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


DELETE = object()
INVALID = [
    (("nodes", 1, "limit_kw"), -5, r"nodes\[1\]\.limit_kw"),
    (("nodes", 1, "limit_kw"), 0, r"nodes\[1\]\.limit_kw"),
    (("nodes", 1, "limit_kw"), "lots", r"nodes\[1\]\.limit_kw"),
    (("nodes", 0, "limit_kw"), DELETE, r"nodes\[0\]\.limit_kw"),
    (("nodes", 1, "export_limit_kw"), -1, r"nodes\[1\]\.export_limit_kw"),
    (("nodes", 1, "parent"), "nowhere", r"nodes\[1\]\.parent"),
    (("nodes", 1, "name"), "grid", r"nodes\[1\]\.name"),
    (("nodes",), [], r"nodes"),
    (("ports", 0, "node"), "nowhere", r"ports\[0\]\.node"),
    (("ports", 0, "max_charge_kw"), DELETE, r"ports\[0\]\.max_charge_kw"),
    (("ports", 0, "max_charge_kw"), 0, r"ports\[0\]\.max_charge_kw"),
    (("ports", 0, "max_discharge_kw"), -1, r"ports\[0\]\.max_discharge_kw"),
    (("ports", 0, "charge_efficiency"), 1.5, r"ports\[0\]\.charge_efficiency"),
    (("ports", 0, "discharge_efficiency"), 0, r"ports\[0\]\.discharge_efficiency"),
    (("ports", 0, "count"), 0, r"ports\[0\]\.count"),
    (("ports", 0, "count"), 1.5, r"ports\[0\]\.count"),
    (("ports", 0, "charger_limit_kw"), -3, r"ports\[0\]\.charger_limit_kw"),
    (("ports",), [], r"ports"),
    (("ports",), [{"node": "t", "max_charge_kw": 7}, {"node": "t", "max_charge_kw": 11}], r"ports"),
    (("dt_minutes",), 7, r"dt_minutes"),
    (("dt_minutes",), 7.5, r"dt_minutes"),
    (("dt_minutes",), 0, r"dt_minutes"),
    (("dt_minutes",), 90, r"dt_minutes"),
    (("horizon_steps",), 0, r"horizon_steps"),
    (("start_hour",), 0.1, r"start_hour"),
    (("start_hour",), 24, r"start_hour"),
    (("colour",), "red", r"colour.*not a known field"),
    (("queue",), {"capacity": -1}, r"queue\.capacity"),
    (("queue",), {"patience_minutes": -5}, r"queue\.patience_minutes"),
    (("battery",), {"taper_knee_soc": 1.0}, r"battery\.taper_knee_soc"),
    (("battery",), {"taper_floor": 2}, r"battery\.taper_floor"),
    (("reward",), {"bogus": 1.0}, r"reward"),
    (("reward",), {"unmet_eur_per_kwh": -1.0}, r"reward\.unmet_eur_per_kwh"),
]


@pytest.mark.parametrize(("path", "value", "field"), INVALID,
                         ids=[f"{'.'.join(map(str, p))}={v!r}"[:40] for p, v, _ in INVALID])
def test_invalid_site_names_the_field(path, value, field):
    with pytest.raises(SiteError, match=field) as err:
        load_site(with_change(path, value))
    assert isinstance(err.value, ValueError)
    assert "'broken'" in str(err.value), "the message names the site"


def test_two_roots_are_refused():
    spec = with_change(("nodes",), BASE["nodes"] + [{"name": "island", "limit_kw": 5}])
    with pytest.raises(SiteError, match=r"nodes.*exactly one root.*found 2"):
        load_site(spec)


@pytest.mark.parametrize("extra", [
    [{"name": "x", "parent": "y", "limit_kw": 5}, {"name": "y", "parent": "x", "limit_kw": 5}],
    [{"name": "x", "parent": "x", "limit_kw": 5}],
    [{"name": "x", "parent": "y", "limit_kw": 5}, {"name": "y", "parent": "z", "limit_kw": 5},
     {"name": "z", "parent": "x", "limit_kw": 5}],
], ids=["two-cycle", "self-parent", "three-cycle"])
def test_cycles_and_disconnected_nodes_are_refused(extra):
    with pytest.raises(SiteError, match=r"'x'") as err:
        load_site(with_change(("nodes",), BASE["nodes"] + extra))
    message = str(err.value)
    assert "'broken'" in message, "the message names the site"
    assert "nodes[2].parent" in message, "the message names the field of the first node off the tree"


@pytest.mark.parametrize("parent_of_2", [0, 1])
def test_numeric_node_names_build_the_same_tree_as_strings(parent_of_2):
    # YAML reads `name: 1` and `parent: 0` as numbers.
    def spec(name):
        return {"nodes": [{"name": name(0), "limit_kw": 100},
                          {"name": name(1), "parent": name(0), "limit_kw": 50},
                          {"name": name(2), "parent": name(parent_of_2), "limit_kw": 20}],
                "ports": [{"node": name(2), "max_charge_kw": 7}]}

    expected = load_site(spec(str))
    np.testing.assert_array_equal(expected.node_parent, [-1, 0, parent_of_2])
    try:
        params = load_site(spec(int))
    except SiteError:
        return  # refusing numeric names with a clear message would do too
    np.testing.assert_array_equal(params.node_parent, expected.node_parent)
    assert params.node_names == expected.node_names


def test_missing_yaml_file(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(SiteError, match="nowhere.yaml"):
        load_site(missing)
    with pytest.raises(SiteError, match="nowhere.yaml"):
        load_site(str(missing))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(SiteError, match=r"no_such_site.*caltech"):
        load_site("no_such_site")


@pytest.mark.parametrize(("text", "problem"), [
    ("nodes: [\n", "invalid YAML"),
    ("- grid\n- transformer\n", "top level must be a mapping"),
])
def test_bad_yaml_content(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SiteError, match=problem):
        load_site(path)


def test_errors_in_a_file_name_the_file_and_field(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(with_change(("nodes", 1, "limit_kw"), -1)))
    with pytest.raises(SiteError, match=r"site\.yaml.*nodes\[1\]\.limit_kw"):
        load_site(path)


def test_yaml_file_loads_like_the_mapping(tmp_path):
    spec = copy.deepcopy(BASE)
    spec.update(dt_minutes=30, queue={"capacity": 3, "patience_minutes": 45},
                battery={"taper_knee_soc": 0.7}, reward={"carbon_eur_per_kg": 0.1},
                scenario={"sessions_per_day": 12, "loads": [{"node": "t", "base_kw": 5}]})
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    from_mapping, from_file = load_site(spec), load_site(path)
    assert_same(snapshot(from_file), snapshot(from_mapping))
    assert from_file.queue_patience_steps == 1 and from_file.dt_hours == 0.5
    changed = {"queue": {"capacity": 1}, "horizon_steps": 10}
    with_overrides = load_site(path, **changed)
    assert with_overrides.queue_capacity == 1 and with_overrides.queue_patience_steps == 1
    assert_same(snapshot(with_overrides), snapshot(load_site(spec, **changed)))


def test_preset_file_path_loads_like_the_preset_name():
    path = resources.files("envs") / "sites" / "v2g_workplace.yaml"
    assert_same(snapshot(load_site(str(path))), snapshot(load_site("v2g_workplace")))


def test_loading_leaves_the_mapping_alone():
    spec = copy.deepcopy(BASE)
    load_site(spec, queue={"capacity": 1}, nodes=[{"name": "g", "limit_kw": 9}],
              ports=[{"node": "g", "max_charge_kw": 3}])
    assert spec == BASE


def test_site_params_pass_through_and_replace():
    params = load_site(BASE)
    assert load_site(params) is params
    shorter = load_site(params, horizon_steps=4)
    assert shorter.horizon_steps == 4 and params.horizon_steps == 96
    np.testing.assert_array_equal(shorter.node_port_lo, params.node_port_lo)


# --- depth-first layout -----------------------------------------------------------------------

TREE = {
    "nodes": [
        {"name": "grid", "limit_kw": 200},
        {"name": "b", "parent": "grid", "limit_kw": 50},
        {"name": "a1", "parent": "a", "limit_kw": 20},
        {"name": "a", "parent": "grid", "limit_kw": 80},
        {"name": "b1", "parent": "b", "limit_kw": 30},
        {"name": "a2", "parent": "a", "limit_kw": 20},
        {"name": "c", "parent": "grid", "limit_kw": 10},
    ],
    "ports": [
        {"name": "a1_", "node": "a1", "count": 2, "max_charge_kw": 7},
        {"name": "main", "node": "grid", "max_charge_kw": 50},
        {"name": "b1_", "node": "b1", "max_charge_kw": 7},
        {"name": "ac", "node": "a", "max_charge_kw": 11, "charger_limit_kw": 11},
        {"name": "bb", "node": "b", "count": 2, "max_charge_kw": 7},
        {"name": "a2_", "node": "a2", "max_charge_kw": 7},
    ],
}


def test_hand_made_tree_layout():
    params = load_site(TREE)
    assert params.node_names == ("grid", "b", "b1", "a", "a1", "a2", "ac_charger0", "c")
    np.testing.assert_array_equal(params.node_parent, [-1, 0, 1, 0, 3, 3, 3, 0])
    np.testing.assert_array_equal(params.node_depth, [0, 1, 2, 1, 2, 2, 2, 1])
    np.testing.assert_array_equal(params.node_subtree_end, [8, 3, 3, 7, 5, 6, 7, 8])
    assert params.port_names == ("main0", "bb0", "bb1", "b1_0", "a1_0", "a1_1", "a2_0", "ac0")
    np.testing.assert_array_equal(params.port_node, [0, 1, 1, 2, 4, 4, 5, 6])
    np.testing.assert_array_equal(params.node_port_lo, [0, 1, 3, 4, 4, 6, 7, 8])
    np.testing.assert_array_equal(params.node_port_hi, [8, 4, 4, 8, 6, 7, 8, 8])
    np.testing.assert_array_equal(params.node_import_limit_kw, [200, 50, 30, 80, 20, 20, 11, 10])
    np.testing.assert_array_equal(params.port_max_charge_kw, [50, 7, 7, 7, 7, 7, 7, 11])
    check_layout(params)


def descendants(params, node):
    """Nodes whose parent chain reaches ``node`` (itself included), by walking parents."""
    found = set()
    for m in range(params.num_nodes):
        walk = m
        while walk >= 0:
            if walk == node:
                found.add(m)
                break
            walk = params.node_parent[walk]
    return found


def check_layout(params):
    n, p = params.num_nodes, params.num_ports
    assert params.node_parent[0] == -1
    assert all(0 <= params.node_parent[i] < i for i in range(1, n)), "parents come first"
    assert (np.diff(params.port_node) >= 0).all(), "ports are grouped by node in node order"
    for node in range(n):
        below = descendants(params, node)
        assert below == set(range(node, params.node_subtree_end[node])), node
        ports_below = {q for q in range(p) if params.port_node[q] in below}
        lo, hi = params.node_port_lo[node], params.node_port_hi[node]
        assert ports_below == set(range(lo, hi)), node
        own = np.flatnonzero(params.port_node == node)
        np.testing.assert_array_equal(own, np.arange(lo, lo + len(own)))
        depth, walk = 0, node
        while params.node_parent[walk] >= 0:
            depth, walk = depth + 1, params.node_parent[walk]
        assert params.node_depth[node] == depth
        if params.port_node_incidence is not None:
            np.testing.assert_array_equal(params.port_node_incidence[:, node],
                                          [q in ports_below for q in range(p)])
    levels = params.levels_bottom_up
    assert sorted(np.concatenate(levels).tolist()) == list(range(n))
    assert [int(params.node_depth[level[0]]) for level in levels] == list(range(len(levels) - 1, -1, -1))
    for level, slot in zip(levels, params.level_port_slot, strict=True):
        assert (params.node_depth[level] == params.node_depth[level[0]]).all()
        for q in range(p):
            owners = [j for j, node in enumerate(level) if params.port_node[q] in descendants(params, node)]
            assert slot[q] == (owners[0] if owners else len(level)), (q, level, slot)


@st.composite
def trees(draw):
    count = draw(st.integers(1, 9))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, count)]
    order = draw(st.permutations(range(count)))
    nodes = []
    for i in order:
        nodes.append({"name": f"n{i}", "limit_kw": 10.0 + i})
        if parents[i] is not None:
            nodes[-1]["parent"] = f"n{parents[i]}"
    ports = []
    for g in range(draw(st.integers(1, 5))):
        ports.append({"name": f"g{g}_", "node": f"n{draw(st.integers(0, count - 1))}",
                      "count": draw(st.integers(1, 3)), "max_charge_kw": 7})
        if draw(st.booleans()):
            ports[-1].update(charger_limit_kw=11, ports_per_charger=draw(st.integers(1, 2)))
    return {"nodes": nodes, "ports": ports}


@settings(max_examples=40, deadline=None)
@given(trees())
def test_random_tree_layout(spec):
    params = load_site(spec)
    check_layout(params)
    names = {node["name"] for node in spec["nodes"]}
    for node in spec["nodes"]:
        i = params.node_index(node["name"])
        parent = node.get("parent")
        assert params.node_parent[i] == (-1 if parent is None else params.node_index(parent))
    assert set(params.node_names) - names == {name for name in params.node_names if "_charger" in name}


def test_weekend_prices_follow_the_calendar():
    params = load_site("caltech", scenario={"price_noise": 0.0, "weekday": [4, 5]})
    episode = generator_for(params).sample(params, np.random.default_rng(0), 2)
    friday, saturday = episode.price_buy_eur_kwh[:, :params.steps_per_day]
    np.testing.assert_allclose(saturday, 0.85 * friday)


# --- YAML reading and size limits --------------------------------------------------------------

def test_yaml_anchors_and_merge_keys_within_the_bound_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("nodes:\n  - &grid {name: grid, limit_kw: 100}\n  - {<<: *grid, name: t, parent: grid}\n"
                    "ports:\n  - {node: t, max_charge_kw: 7}\n")
    params = load_site(path)
    np.testing.assert_array_equal(params.node_import_limit_kw, [100, 100])


def test_yaml_duplicate_key_is_refused_even_when_the_values_agree(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(BASE) + "dt_minutes: 15\ndt_minutes: 15\n")
    with pytest.raises(SiteError, match=r"twice\.yaml, line \d+: key 'dt_minutes' repeats the key of line"):
        load_site(path)


def test_a_size_limit_is_raised_by_the_environment_or_by_limits(monkeypatch):
    spec = with_change(("ports", 0, "count"), 10_001)
    with pytest.raises(SiteError, match=r"ports\[0\]\.count: the site's port count is 10,001, above the "
                                        r"limit of 10,000; raise it with envs\.limits\.LIMITS\['ports'\]"):
        load_site(spec)
    monkeypatch.setenv("ENVS_MAX_PORTS", "20000")
    assert load_site(spec).num_ports == 10_001
    monkeypatch.delenv("ENVS_MAX_PORTS")
    monkeypatch.setitem(envs.limits.LIMITS, "ports", 20_000)
    assert load_site(spec).num_ports == 10_001
    monkeypatch.setenv("ENVS_MAX_PORTS", "lots")
    with pytest.raises(ConfigError, match="ENVS_MAX_PORTS must be a number, got 'lots'"):
        load_site(spec)


def test_a_node_list_above_the_limit_is_refused():
    nodes = [BASE["nodes"][0]] + [{"name": f"n{i}", "parent": "grid", "limit_kw": 5} for i in range(30_000)]
    with pytest.raises(SiteError, match=r"nodes: the site's node count is 30,001, above the limit of 20,000"):
        load_site(with_change(("nodes",), nodes))


def test_scenario_fields_are_typed_before_they_are_used():
    scenario = {"peak_hours": [8, 17], "peak_widths_hours": [1, 2], "peak_weights": [1, 1],
                "loads": [{"node": "t", "base_kw": 3}], "fleet": [{"battery_kwh": 50, "max_charge_kw": 7}]}
    params = load_site(with_change(("scenario",), scenario))
    generator = generator_for(params)
    assert generator.peak_hours == (8.0, 17.0) and generator.loads == ({"node": "t", "base_kw": 3.0},)
    assert generator.fleet[0].battery_kwh == 50.0 and generator.fleet[0].share == 1.0
    episode = generator.sample(params, np.random.default_rng(0), 1)
    assert episode.node_load_kw[0, :, params.node_index("t")].min() > 0
