"""agents/perport_offpolicy.py: per-port TD3 and TQC; per-port A2C; off-policy policies on unit actions."""

import json

import numpy as np
import pytest
import torch
from sb3_contrib import TQC
from stable_baselines3 import TD3

from agents.networks import deterministic_actor, site_spaces
from agents.perport_offpolicy import PerPortTD3Policy, PerPortTQCPolicy
from agents.policy_io import load_policy
from agents.train import build_env, build_model, site_params, train
from envs.errors import ConfigError
from envs.observation import declared_layout
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site
from tests.test_networks import _observations, _permute_ports
from tests.test_perport_sac import check_run_loads_exports_and_acts_on_jpl
from tests.test_train import train_config

SMALL_OFF_POLICY = ["env=physical", "+site.overrides.horizon_steps=24", "+site.overrides.start_hour=7",
                    "n_envs=4", "agent.learning_starts=48", "agent.batch_size=32", "agent.buffer_size=1000",
                    "agent.gradient_steps=1", "total_timesteps=480", "eval_episodes=2", "eval_freq=240",
                    "checkpoint_freq=240", "progress_bar=false"]


def _policy(algorithm, policy_class, site, **kwargs):
    env = SmartChargingVecEnv(num_envs=2, site=site, step_info=False)
    torch.manual_seed(0)
    return algorithm(policy_class, env, learning_starts=16, batch_size=16, buffer_size=500, seed=0,
                     policy_kwargs={"site": env.params, **kwargs}).policy


@pytest.mark.parametrize("algorithm, policy_class, port_values", [
    (TD3, PerPortTD3Policy, False), (TQC, PerPortTQCPolicy, False), (TD3, PerPortTD3Policy, True),
    (TQC, PerPortTQCPolicy, True)])
def test_actors_follow_a_port_permutation_and_critics_ignore_it(algorithm, policy_class, port_values):
    params = load_site("caltech")
    policy = _policy(algorithm, policy_class, params, port_values=port_values,
                     **({"n_quantiles": 5} if algorithm is TQC else {}))
    obs = _observations(params, steps=44, num_envs=3)
    rng = np.random.default_rng(5)
    order = rng.permutation(params.num_ports)
    actions = rng.uniform(-1.0, 1.0, (3, params.num_ports)).astype(np.float32)
    moved = _permute_ports(params, obs, order)
    with torch.no_grad():
        mean = policy.actor.network.forward_actor(torch.as_tensor(obs)).numpy()
        moved_mean = policy.actor.network.forward_actor(torch.as_tensor(moved)).numpy()
        values = policy.critic(torch.as_tensor(obs), torch.as_tensor(actions))
        moved_values = policy.critic(torch.as_tensor(moved), torch.as_tensor(actions[:, order]))
        other = policy.critic(torch.as_tensor(obs), torch.as_tensor(-actions))
    np.testing.assert_allclose(moved_mean, mean[:, order], rtol=1e-5, atol=1e-6)
    if algorithm is TQC:
        assert values.shape == (3, 2, 5) and policy.critic.quantiles_total == 10
        values, moved_values, other = [values], [moved_values], [other]
    else:
        assert len(values) == 2 and values[0].shape == (3, 1)
    for value, moved_value in zip(values, moved_values, strict=True):
        np.testing.assert_allclose(moved_value.numpy(), value.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(other[0].numpy(), values[0].numpy())
    with torch.no_grad():
        expected = torch.tanh(policy.actor.network.forward_actor(torch.as_tensor(obs))).numpy()
        exported = deterministic_actor(policy)(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(policy.predict(obs, deterministic=True)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported, expected, rtol=1e-6, atol=1e-7)


def test_port_values_add_one_term_per_occupied_port():
    params = load_site("caltech")
    policy = _policy(TD3, PerPortTD3Policy, params, port_values=True)
    obs = _observations(params, steps=44, num_envs=3)
    actions = torch.zeros((3, params.num_ports))
    network = policy.critic.q_networks[0]
    with torch.no_grad():
        for layer in (network.critic[-1], network.port_value_head[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        network.port_value_head[-1].bias.fill_(0.5)
        value = network.forward_critic(torch.as_tensor(obs), actions).numpy()
    occupied = obs[:, declared_layout(params).slices["occupied"]].sum(axis=1)
    assert occupied.min() > 0 and len(set(occupied)) > 1
    np.testing.assert_allclose(value[:, 0], 0.5 * occupied, rtol=1e-6)
    assert policy.config()["port_values"] is True and network.port_value_head is not None
    assert policy.actor.network.port_value_head is None  # the actor has no value


def test_options_are_checked_by_name():
    params = load_site("caltech")
    with pytest.raises(ValueError, match="n_critics"):
        _policy(TD3, PerPortTD3Policy, params, n_critics=0)
    with pytest.raises(ValueError, match="n_quantiles"):
        _policy(TQC, PerPortTQCPolicy, params, n_quantiles=0)
    with pytest.raises(ValueError, match="gSDE"):
        PerPortTQCPolicy(*site_spaces(params), lambda _: 1e-3, site=params, use_sde=True)
    with pytest.raises(ValueError, match="activation"):
        _policy(TD3, PerPortTD3Policy, params, activation="sigmoid")
    cfg = train_config("agent=td3_perport", "env=physical", "+site.overrides.horizon_steps=4", "n_envs=2",
                       "agent.action_noise_std=-0.1")
    with pytest.raises(ConfigError, match="agent.action_noise_std must be at least 0"):
        build_model(cfg["agent"], build_env(cfg, site_params(cfg)), site_params(cfg), seed=0)


def test_td3_explores_with_noise_as_wide_as_the_site_the_flat_td3_too():
    cfg = train_config("agent=td3_perport", "env=physical", "+site.overrides.horizon_steps=4", "n_envs=2",
                       "agent.action_noise_std=0.25")
    params = site_params(cfg)
    model = build_model(cfg["agent"], build_env(cfg, params), params, seed=0)
    noise = model.action_noise()
    assert noise.shape == (params.num_ports,) and 0.1 < noise.std() < 0.4
    flat = train_config("agent=td3", "+site.overrides.horizon_steps=4", "n_envs=2")
    model = build_model(flat["agent"], build_env(flat, site_params(flat)), site_params(flat), seed=0)
    assert model.action_noise is not None and model.action_noise().shape == (params.num_ports,)


@pytest.mark.parametrize("agent", ["td3_perport", "tqc_perport"])
def test_a_trained_run_saves_loads_exports_and_acts_on_another_site(tmp_path, agent):
    overrides = [f"agent={agent}", *SMALL_OFF_POLICY]
    if agent == "tqc_perport":
        overrides.append("agent.policy_kwargs.n_quantiles=5")
    metrics = train(train_config(*overrides), tmp_path / "run")
    assert metrics["timesteps"] >= 480
    config = json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())
    assert "site" not in config["policy_kwargs"] and config["policy_kwargs"]["embed_dim"] == 32
    check_run_loads_exports_and_acts_on_jpl(tmp_path)


@pytest.mark.parametrize("agent", ["sac_perport", "sac"])
def test_a_squashed_policy_trained_on_unit_actions_keeps_their_range_when_loaded(tmp_path, agent):
    overrides = [f"agent={agent}", *SMALL_OFF_POLICY, "+site.overrides.action_mode=unit"]
    train(train_config(*overrides), tmp_path / "run")
    trained = load_policy(tmp_path / "run")
    params = load_site("caltech", horizon_steps=24, start_hour=7, action_mode="unit")
    obs = _observations(params, steps=8, num_envs=2)
    trained.begin(params, None)
    actions, _ = trained.predict(obs)
    assert trained.policy.action_space.low.min() == 0.0 and trained.policy.action_space.shape == (54,)
    with torch.no_grad():
        squashed = trained.policy.actor(torch.as_tensor(obs), deterministic=True).numpy()
        if agent == "sac_perport":
            exported = deterministic_actor(trained.policy)(torch.as_tensor(obs)).numpy()
            np.testing.assert_allclose(exported, actions, rtol=1e-5, atol=1e-6)
    assert squashed.min() < 0.0 < squashed.max()
    np.testing.assert_allclose(actions, (squashed + 1.0) / 2.0, rtol=1e-5, atol=1e-6)
    trained.begin(params.replace(action_mode="signed"), None)  # one-way: the same charge fractions
    np.testing.assert_allclose(trained.predict(obs)[0], actions, rtol=1e-6, atol=1e-7)


def test_per_port_a2c_trains_and_loads(tmp_path):
    overrides = ["agent=a2c_perport", "env=physical", "+site.overrides.horizon_steps=24",
                 "+site.overrides.start_hour=7", "n_envs=4", "total_timesteps=480", "eval_episodes=2",
                 "eval_freq=240", "checkpoint_freq=240", "progress_bar=false"]
    metrics = train(train_config(*overrides), tmp_path / "run")
    assert metrics["timesteps"] >= 480
    trained = load_policy(tmp_path / "run")
    assert type(trained.policy).__name__ == "PerPortPolicy"
    jpl = load_site("jpl")
    trained.begin(jpl, None)
    actions, _ = trained.predict(np.zeros((2, declared_layout(jpl).size), dtype=np.float32))
    assert actions.shape == (2, jpl.num_ports)
