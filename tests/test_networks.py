"""The per-port policy: equivariance, one set of weights for every site, SB3 training, export."""

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO

from agents.networks import PerPortPolicy, deterministic_actor
from envs import SmartChargingVectorEnv
from envs.observation import declared_layout
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site

torch.set_num_threads(1)


def _policy(site, seed=0, **kwargs):
    env = SmartChargingVecEnv(num_envs=2, site=site, step_info=False)
    torch.manual_seed(seed)
    return PPO(PerPortPolicy, env, n_steps=8, batch_size=16, seed=seed,
               policy_kwargs={"site": env.params, **kwargs}).policy


def _observations(params, steps=40, num_envs=3, seed=0):
    """Observations after ``steps`` steps of full charging (EVs on the ports, nodes loaded)."""
    env = SmartChargingVectorEnv(num_envs, params)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs, *_ = env.step(np.ones((num_envs, params.num_ports)))
    return obs


def _permute_ports(params, obs, order):
    out = obs.copy()
    columns = declared_layout(params).port_columns
    out[:, columns] = obs[:, columns[order]]
    return out


def _mean_actions(policy, obs):
    with torch.no_grad():
        return policy.mlp_extractor.forward_actor(torch.as_tensor(obs)).numpy()


@pytest.fixture(scope="module")
def caltech_policy():
    return _policy(load_site("caltech"), ortho_init=False)


def test_actions_follow_a_permutation_of_the_ports(caltech_policy):
    params = load_site("caltech")
    obs = _observations(params)
    order = np.random.default_rng(1).permutation(params.num_ports)
    actions = _mean_actions(caltech_policy, obs)
    assert actions[:, obs[0, :params.num_ports] > 0].std() > 1e-3, "ports should get different actions"
    np.testing.assert_allclose(_mean_actions(caltech_policy, _permute_ports(params, obs, order)),
                               actions[:, order], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        values = caltech_policy.predict_values(torch.as_tensor(obs))
        permuted = caltech_policy.predict_values(torch.as_tensor(_permute_ports(params, obs, order)))
    np.testing.assert_allclose(permuted.numpy(), values.numpy(), rtol=1e-5, atol=1e-6)


def test_permutation_within_each_node_of_a_tree():
    params = load_site("jpl")
    policy = _policy(params, ortho_init=False)
    obs = _observations(params, steps=36)
    rng = np.random.default_rng(2)
    order = np.arange(params.num_ports)
    for lo, hi in zip(params.node_port_lo, params.node_port_hi, strict=True):
        if hi > lo and np.all(params.port_node[lo:hi] == params.port_node[lo]):
            order[lo:hi] = lo + rng.permutation(hi - lo)
    assert not np.array_equal(order, np.arange(params.num_ports))
    np.testing.assert_allclose(_mean_actions(policy, _permute_ports(params, obs, order)),
                               _mean_actions(policy, obs)[:, order], rtol=1e-5, atol=1e-6)


def test_one_set_of_weights_runs_on_jpl_and_city(caltech_policy):
    weights = {name: t.clone() for name, t in caltech_policy.state_dict().items()}
    for name in ("jpl", "city"):
        params = load_site(name)
        obs = _observations(params, steps=36, num_envs=2)
        caltech_policy.set_site(params)
        actions, _ = caltech_policy.predict(obs, deterministic=True)
        assert actions.shape == (2, params.num_ports) and np.all(np.isfinite(actions))
        fresh = _policy(params, seed=5, ortho_init=False)
        assert not np.allclose(_mean_actions(fresh, obs), _mean_actions(caltech_policy, obs))
        fresh.load_state_dict(weights)
        np.testing.assert_allclose(fresh.predict(obs, deterministic=True)[0], actions, rtol=1e-5, atol=1e-6)
    caltech_policy.set_site(load_site("caltech"))
    assert caltech_policy.predict(_observations(load_site("caltech")), deterministic=True)[0].shape == (3, 54)
    for name, tensor in caltech_policy.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_state_dict_does_not_depend_on_the_site(caltech_policy):
    city = _policy(load_site("city", horizon_steps=8))
    shapes = {name: tuple(t.shape) for name, t in caltech_policy.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in city.state_dict().items()}
    assert "log_std" in shapes and shapes["log_std"] == (1,)
    assert not any(name.endswith(("columns", "scale", "ancestors")) for name in shapes)


def test_a_site_with_another_forecast_window_is_refused(caltech_policy):
    with pytest.raises(ValueError, match="site-wide observation columns"):
        caltech_policy.set_site(load_site("caltech", forecast_steps=4))
    with pytest.raises(ValueError, match="pooling"):
        _policy(load_site("nl_home"), pooling=["sum"])


def test_config_is_json_and_rebuilds_the_policy(caltech_policy):
    config = json.loads(json.dumps(caltech_policy.config()))
    assert config["embed_dim"] == 32 and config["pooling"] == ["mean", "max"]
    params = load_site("caltech")
    rebuilt = _policy(params, seed=3, **config)
    rebuilt.load_state_dict(caltech_policy.state_dict())
    obs = _observations(params)
    np.testing.assert_array_equal(rebuilt.predict(obs, deterministic=True)[0],
                                  caltech_policy.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_sb3_learns_a_few_hundred_steps(algo, tmp_path):
    env = SmartChargingVecEnv(num_envs=8, site=load_site("caltech", horizon_steps=8, start_hour=8),
                              step_info=False)
    kwargs = {"batch_size": 32, "n_epochs": 2} if algo is PPO else {}
    model = algo(PerPortPolicy, env, n_steps=8, seed=0, policy_kwargs={"site": env.params}, **kwargs)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(320)
    assert model.num_timesteps >= 320
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert sum(not torch.equal(a, b) for a, b in zip(after, before, strict=True)) == len(before)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=env)
    obs = env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("kind", ["per_port", "mlp"])
def test_deterministic_actor_equals_predict(kind, caltech_policy):
    params = load_site("caltech")
    if kind == "per_port":
        policy = caltech_policy
    else:
        env = SmartChargingVecEnv(num_envs=2, site=params)
        policy = PPO("MlpPolicy", env, n_steps=8, batch_size=16, seed=0).policy
    obs = _observations(params)
    actor = deterministic_actor(policy)
    head = policy.mlp_extractor.action_head if kind == "per_port" else policy.action_net
    with torch.no_grad():
        features = actor.features_extractor(torch.as_tensor(obs))
        mean = actor.action_net(actor.mlp_extractor.forward_actor(features))
        saved = head.weight.clone(), head.bias.clone()
        gain = 3.0 / (mean - mean.median()).abs().max()
        head.weight.mul_(gain)
        head.bias.sub_(mean.median()).mul_(gain)
        try:
            actions = actor(torch.as_tensor(obs)).numpy()
            expected, _ = policy.predict(obs, deterministic=True)
        finally:
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])
    assert actions.shape == (3, 54) and actions.dtype == np.float32
    assert np.abs(actions).max() == 1.0 and (np.abs(actions) < 1).any(), "some actions clipped, some not"
    np.testing.assert_allclose(actions, expected, rtol=1e-6, atol=1e-7)


TOY_SITE = {"name": "toy", "dt_minutes": 15, "horizon_steps": 8, "start_hour": 8, "forecast_steps": 2,
            "nodes": [{"name": "grid", "limit_kw": 200}],
            "ports": [{"name": "p", "node": "grid", "count": 4, "max_charge_kw": 11}],
            "scenario": {"sessions_per_day": 200, "energy_mean_kwh": 30, "peak_hours": [7.0],
                         "peak_widths_hours": [1.0], "peak_weights": [1.0]}}


@pytest.mark.parametrize(("tariff", "direction"), [(0.8, 1), (0.0, -1)])
def test_ppo_learns_whether_charging_pays(tariff, direction):
    params = load_site(TOY_SITE, scenario={"tariff_eur_kwh": tariff})
    env = SmartChargingVecEnv(num_envs=16, site=params, step_info=False)
    probe = SmartChargingVecEnv(num_envs=32, site=params, step_info=False)
    probe.seed(100)
    obs = probe.reset()
    occupied = obs[:, :params.num_ports] > 0
    assert occupied.mean() > 0.5
    model = PPO(PerPortPolicy, env, n_steps=8, batch_size=64, n_epochs=4, learning_rate=1e-3, seed=0,
                policy_kwargs={"site": params, "embed_dim": 16, "hidden_dim": 16})
    before = model.predict(obs, deterministic=True)[0][occupied].mean()
    model.learn(2048)
    after = model.predict(obs, deterministic=True)[0][occupied].mean()
    assert abs(before) < 0.05 and direction * after > 0.5, (before, after)


def test_deterministic_actor_exports_with_a_dynamic_batch(caltech_policy):
    params = load_site("caltech")
    actor = deterministic_actor(caltech_policy)
    obs = torch.as_tensor(_observations(params, steps=44, num_envs=5))
    exported = torch.export.export(actor, (obs[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert obs[:2, :54].sum() != obs[:, :54].sum(), "another batch, other occupied ports"
    with torch.no_grad():
        np.testing.assert_allclose(exported.module()(obs).numpy(), actor(obs).numpy(), rtol=1e-6, atol=1e-7)


def test_a_deeper_head_keeps_equivariance_rebuilds_from_its_config_and_refuses_zero_layers():
    params = load_site("caltech")
    deep = _policy(params, head_layers=3, ortho_init=False)
    assert len([m for m in deep.mlp_extractor.deeper_head if isinstance(m, torch.nn.Linear)]) == 2
    obs = _observations(params)
    order = np.random.default_rng(2).permutation(params.num_ports)
    np.testing.assert_allclose(_mean_actions(deep, _permute_ports(params, obs, order)),
                               _mean_actions(deep, obs)[:, order], rtol=1e-5, atol=1e-6)
    config = json.loads(json.dumps(deep.config()))
    assert config["head_layers"] == 3
    rebuilt = _policy(params, seed=4, **config)
    rebuilt.load_state_dict(deep.state_dict())
    np.testing.assert_array_equal(rebuilt.predict(obs, deterministic=True)[0],
                                  deep.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="head_layers"):
        _policy(params, head_layers=0)


def test_occupied_likelihood_counts_only_ports_with_an_ev():
    params = load_site("caltech")
    obs = torch.as_tensor(_observations(params, steps=40))
    occupied = obs[:, declared_layout(params).slices["occupied"]] > 0.5
    assert occupied.any() and not occupied.all()
    masked = _policy(params, ortho_init=False, occupied_likelihood=True)
    plain = _policy(params, ortho_init=False)
    plain.load_state_dict(masked.state_dict())
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (len(obs), params.num_ports)),
                              dtype=torch.float32)
    with torch.no_grad():
        value, log_prob, entropy = masked.evaluate_actions(obs, actions)
        plain_value, plain_log_prob, plain_entropy = plain.evaluate_actions(obs, actions)
        mean = masked.mlp_extractor.forward_actor(obs)
        normal = torch.distributions.Normal(mean, masked.log_std.exp().expand_as(mean))
        per_port = normal.log_prob(actions)
        torch.testing.assert_close(log_prob, (per_port * occupied).sum(dim=1))
        torch.testing.assert_close(plain_log_prob, per_port.sum(dim=1))
        torch.testing.assert_close(entropy, (normal.entropy() * occupied).sum(dim=1))
        torch.testing.assert_close(value, plain_value)
        torch.manual_seed(1)
        sampled, _, sampled_log_prob = masked(obs)
        torch.manual_seed(1)
        plain_sampled = plain(obs)[0]
    torch.testing.assert_close(sampled, plain_sampled)
    torch.testing.assert_close(sampled_log_prob, (normal.log_prob(sampled) * occupied).sum(dim=1))
    assert masked.config()["occupied_likelihood"] is True and plain.config()["occupied_likelihood"] is False
    env = SmartChargingVecEnv(num_envs=4, site=load_site("caltech", horizon_steps=8, start_hour=8),
                              step_info=False)
    model = PPO(PerPortPolicy, env, n_steps=8, batch_size=16, n_epochs=2, seed=0,
                policy_kwargs={"site": env.params, "occupied_likelihood": True})
    model.learn(64)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def _net_kw(params, obs, actions):
    """(B,) the EVs' net power that ``actions`` ask for, clipped as the env clips them."""
    layout = declared_layout(params).slices
    charge_cap, discharge_cap = obs[:, layout["max_charge_kw"]], obs[:, layout["max_discharge_kw"]]
    actions = np.clip(actions, -1.0, 1.0)
    return np.where(actions > 0, actions * charge_cap, actions * discharge_cap).sum(axis=1)


def test_site_power_head_sets_the_net_power_and_keeps_equivariance():
    params = load_site("v2g_workplace")
    policy = _policy(params, ortho_init=False, site_power=True)
    network = policy.mlp_extractor
    with torch.no_grad():
        network.site_power_head.bias.fill_(0.3)
    obs = _observations(params, steps=40, num_envs=4)
    tensor = torch.as_tensor(obs)
    with torch.no_grad():
        mean = network.forward_actor(tensor).numpy()
        (_, _, env, limits_kw), summary = network._summary(tensor)
        total_kw = network._site_total_kw(network.activation(network.site_encoder(summary)), env, limits_kw)
    layout = declared_layout(params).slices
    charging = (mean > 0) & (obs[:, layout["occupied"]] > 0.5) & (obs[:, layout["max_charge_kw"]] > 0.1)
    capped = (mean >= 1.0 - 1e-6) & charging
    shared = charging.any(axis=1) & ~capped.any(axis=1) & (total_kw.numpy() > 0)
    assert shared.sum() >= 2
    np.testing.assert_allclose(_net_kw(params, obs, mean)[shared], total_kw.numpy()[shared],
                               rtol=1e-4, atol=1e-3)
    assert (mean[charging] <= 1.0 + 1e-6).all()
    order = np.random.default_rng(3).permutation(params.num_ports)
    np.testing.assert_allclose(_mean_actions(policy, _permute_ports(params, obs, order)), mean[:, order],
                               rtol=1e-5, atol=1e-6)
    target = torch.as_tensor(np.where(obs[:, layout["occupied"]] > 0.5, 0.5, 0.0), dtype=torch.float32)
    error = network.site_power_error(tensor, target)
    error.backward()
    assert error.item() > 0 and network.site_power_head.weight.grad.abs().sum() > 0
    config = json.loads(json.dumps(policy.config()))
    assert config["site_power"] is True
    rebuilt = _policy(params, seed=5, **config)
    rebuilt.load_state_dict(policy.state_dict())
    np.testing.assert_array_equal(rebuilt.predict(obs, deterministic=True)[0],
                                  policy.predict(obs, deterministic=True)[0])


def test_cloning_fits_the_site_power_head_to_the_teachers_net_power():
    from agents.imitation import clone

    params = load_site("v2g_workplace")
    policy = _policy(params, site_power=True)
    obs = _observations(params, steps=40, num_envs=8)
    layout = declared_layout(params).slices
    target = np.where(obs[:, layout["occupied"]] > 0.5, 0.4, 0.0).astype(np.float32)
    tensor, target_tensor = torch.as_tensor(obs), torch.as_tensor(target)
    before = policy.mlp_extractor.site_power_error(tensor, target_tensor).item()
    clone(policy, obs, target, epochs=200, batch_size=8, learning_rate=3e-3)
    with torch.no_grad():
        after = policy.mlp_extractor.site_power_error(tensor, target_tensor).item()
    assert after < 0.05 * before
    np.testing.assert_allclose(_net_kw(params, obs, policy.predict(obs, deterministic=True)[0]),
                               _net_kw(params, obs, target), rtol=0.05, atol=1.0)


def test_attention_among_ports_keeps_equivariance_and_exports():
    params = load_site("caltech")
    policy = _policy(params, ortho_init=False, attention_heads=2)
    obs = _observations(params, steps=44, num_envs=4)
    obs[3] = 0.0  # an env with no EV plugged in
    order = np.random.default_rng(4).permutation(params.num_ports)
    mean = _mean_actions(policy, obs)
    assert np.isfinite(mean).all() and (mean[3] == 0).all()
    np.testing.assert_allclose(_mean_actions(policy, _permute_ports(params, obs, order)), mean[:, order],
                               rtol=1e-5, atol=1e-6)
    alone = _observations(params, steps=44, num_envs=4)[:1]
    np.testing.assert_allclose(_mean_actions(policy, alone), mean[:1], rtol=1e-5, atol=1e-6)
    config = json.loads(json.dumps(policy.config()))
    assert config["attention_heads"] == 2
    actor = deterministic_actor(policy)
    tensor = torch.as_tensor(obs)
    exported = torch.export.export(actor, (tensor[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with torch.no_grad():
        np.testing.assert_allclose(exported.module()(tensor).numpy(), actor(tensor).numpy(),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="attention_heads"):
        _policy(params, attention_heads=-1)
    with pytest.raises(ValueError, match="multiple of attention_heads"):
        _policy(params, attention_heads=3)
    jpl = load_site("jpl")
    policy.set_site(jpl)
    assert policy.predict(np.zeros((2, declared_layout(jpl).size), dtype=np.float32))[0].shape == (2, 52)


@pytest.mark.parametrize("option", [{"attention_heads": 2}, {"site_power": True},
                                    {"price_ranks": True, "load_ranks": True}, {"peak_room": True}])
def test_the_options_export_to_onnx(option, tmp_path):
    from agents.export.onnx_graph import write_onnx
    from agents.export.writer import onnx_actions

    params = load_site("v2g_workplace")
    policy = _policy(params, ortho_init=False, **option)
    obs = _observations(params, steps=44, num_envs=4)
    obs[3] = 0.0
    actor = deterministic_actor(policy)
    path = write_onnx(actor, obs[:2], params.num_ports, tmp_path / "policy.onnx")
    with torch.no_grad():
        expected = actor(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(onnx_actions(path, obs), expected, rtol=1e-5, atol=1e-5)


def test_price_ranks_read_the_prices_before_each_departure_by_hand():
    params = load_site("caltech")  # 15-minute steps, forecast of 8 steps
    policy = _policy(params, ortho_init=False, price_ranks=True)
    layout = declared_layout(params).slices
    obs = np.zeros((1, declared_layout(params).size), dtype=np.float32)
    obs[0, layout["price_buy_eur_kwh"]] = [0.20, 0.10, 0.30, 0.15, 0.25, 0.10, 0.30, 0.30, 0.05]
    for field, values in {"occupied": [1, 1, 1], "hours_to_departure": [1.0, 3.0, -0.5],
                          "remaining_kwh": [3.3, 13.2, 0.0], "max_charge_kw": [6.6, 6.6, 6.6]}.items():
        obs[0, layout[field].start:layout[field].start + 3] = values
    with torch.no_grad():
        context = policy.mlp_extractor._price_context(torch.as_tensor(obs))[0, :3].numpy()
    # port 0: 4 steps before it leaves, 2 of them cheaper than now, 2 steps of charging needed;
    # port 1: leaves after the forecast (8 of its 12 steps seen), 4 cheaper, 8 needed;
    # port 2: overdue, nothing left to charge
    np.testing.assert_allclose(context, [[0.5, 0.0, 1.0], [0.5, -0.5, 8 / 12], [0.0, 0.0, 0.0]], atol=1e-6)


def test_load_ranks_read_the_site_net_load_before_each_departure_by_hand():
    params = load_site("caltech")  # 15-minute steps, forecast of 8 steps, a 300 kW grid connection
    policy = _policy(params, ortho_init=False, load_ranks=True)
    layout = declared_layout(params).slices
    obs = np.zeros((1, declared_layout(params).size), dtype=np.float32)
    obs[0, layout["site_load_kw"]] = [50, 70, 40, 80, 50, 50, 50, 50, 50]
    obs[0, layout["site_pv_kw"]] = [0, 10, 0, 10, 0, 0, 0, 0, 60]
    for field, values in {"occupied": [1, 1, 1], "hours_to_departure": [1.0, 3.0, -0.5]}.items():
        obs[0, layout[field].start:layout[field].start + 3] = values
    with torch.no_grad():
        context = policy.mlp_extractor._load_context(torch.as_tensor(obs))[0, :3].numpy()
    # net load ahead of now (50 kW): +10, -10, +20, 0, 0, 0, 0, -60 kW
    np.testing.assert_allclose(context, [[0.5, 20 / 300], [0.25, 20 / 300], [0.0, 0.0]], atol=1e-6)
    obs[0, layout["site_load_kw"].start] = 90.0  # now above everything ahead
    with torch.no_grad():
        context = policy.mlp_extractor._load_context(torch.as_tensor(obs))[0, :2].numpy()
    np.testing.assert_allclose(context, [[0.0, -20 / 300], [0.0, -20 / 300]], atol=1e-6)  # 70 kW at most


def test_peak_room_reads_the_import_left_below_the_peak_so_far_by_hand():
    params = load_site("v2g_workplace")  # a 250 kW grid connection at the root
    policy = _policy(params, ortho_init=False, peak_room=True)
    layout = declared_layout(params).slices
    obs = np.zeros((2, declared_layout(params).size), dtype=np.float32)
    obs[:, layout["node_headroom_kw"].start] = 250.0 - 60.0  # 60 kW of building load less PV now
    obs[:, layout["peak_import_kw"]] = [[70.0], [0.0]]  # 10 kW of room; the first step, none
    for field, values in {"occupied": [1, 1, 1], "max_charge_kw": [11.0, 11.0, 0.0],
                          "max_discharge_kw": [11.0, 0.0, 5.0]}.items():
        obs[:, layout[field].start:layout[field].start + 3] = values
    with torch.no_grad():
        context = policy.mlp_extractor._peak_context(
            torch.as_tensor(obs), torch.as_tensor(obs[:, layout["node_headroom_kw"].start]),
            torch.tensor([22.0, 22.0]), params.num_ports).numpy()
        ports = policy.mlp_extractor._inputs(torch.as_tensor(obs))[0].numpy()
    expected = [[10 / 250, 10 / 22, 10 / 16], [-60 / 250, -1.0, -1.0]]
    np.testing.assert_allclose(context[:, 0], expected, atol=1e-6)
    assert (context == context[:, :1]).all()  # every port of an env reads the same room
    np.testing.assert_allclose(ports[:, :, -3:], context, atol=1e-6)  # and _inputs appends it
    assert policy.config()["peak_room"] is True and _policy(params).config()["peak_room"] is False


def test_price_ranks_keep_equivariance_rebuild_from_config_and_transfer():
    params = load_site("caltech")
    policy = _policy(params, ortho_init=False, price_ranks=True)
    plain = _policy(params, ortho_init=False)
    obs = _observations(params, steps=44, num_envs=3)
    order = np.random.default_rng(5).permutation(params.num_ports)
    mean = _mean_actions(policy, obs)
    np.testing.assert_allclose(_mean_actions(policy, _permute_ports(params, obs, order)), mean[:, order],
                               rtol=1e-5, atol=1e-6)
    config = json.loads(json.dumps(policy.config()))
    assert config["price_ranks"] is True and plain.config()["price_ranks"] is False
    rebuilt = PerPortPolicy(policy.observation_space, policy.action_space, lambda _: 1e-3, site=params,
                            **config)
    rebuilt.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(_mean_actions(rebuilt, obs), mean, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="size mismatch"):
        plain.load_state_dict(policy.state_dict())
    jpl = load_site("jpl")
    policy.set_site(jpl)
    actions = _mean_actions(policy, _observations(jpl, steps=44, num_envs=2))
    assert actions.shape == (2, 52) and np.isfinite(actions).all()
