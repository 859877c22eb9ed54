"""agents/perport_sac.py: SAC whose actor and Q critics are per-port networks."""

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

from agents.networks import deterministic_actor, site_spaces
from agents.perport_sac import PerPortSACPolicy
from agents.policy_io import load_policy
from agents.train import train
from envs.observation import declared_layout
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site
from tests.test_networks import _observations, _permute_ports
from tests.test_train import train_config

SMALL_SAC = ["agent=sac_perport", "env=physical", "+site.overrides.horizon_steps=24",
             "+site.overrides.start_hour=7", "n_envs=4", "agent.learning_starts=48", "agent.batch_size=32",
             "agent.buffer_size=1000", "agent.gradient_steps=1", "total_timesteps=480", "eval_episodes=2",
             "eval_freq=240", "checkpoint_freq=240", "progress_bar=false"]


def _sac_policy(site, **kwargs) -> PerPortSACPolicy:
    env = SmartChargingVecEnv(num_envs=2, site=site, step_info=False)
    torch.manual_seed(0)
    return SAC(PerPortSACPolicy, env, learning_starts=16, batch_size=16, buffer_size=500, seed=0,
               policy_kwargs={"site": env.params, **kwargs}).policy


def test_the_actor_follows_a_port_permutation_and_the_critics_ignore_it():
    params = load_site("caltech")
    policy = _sac_policy(params)
    obs = _observations(params, steps=44, num_envs=3)
    rng = np.random.default_rng(3)
    order = rng.permutation(params.num_ports)
    actions = rng.uniform(-1.0, 1.0, (3, params.num_ports)).astype(np.float32)
    moved = _permute_ports(params, obs, order)
    with torch.no_grad():
        mean = policy.actor.network.forward_actor(torch.as_tensor(obs)).numpy()
        moved_mean = policy.actor.network.forward_actor(torch.as_tensor(moved)).numpy()
        values = [q.numpy() for q in policy.critic(torch.as_tensor(obs), torch.as_tensor(actions))]
        moved_values = [q.numpy() for q in policy.critic(torch.as_tensor(moved),
                                                         torch.as_tensor(actions[:, order]))]
        other = policy.critic.q1_forward(torch.as_tensor(obs), torch.as_tensor(-actions)).numpy()
    np.testing.assert_allclose(moved_mean, mean[:, order], rtol=1e-5, atol=1e-6)
    assert len(values) == 2 and values[0].shape == (3, 1)
    for value, moved_value in zip(values, moved_values, strict=True):
        np.testing.assert_allclose(moved_value, value, rtol=1e-5, atol=1e-5)
    assert not np.allclose(other, values[0])  # the critics read the actions
    with pytest.raises(ValueError, match="actions of shape"):
        policy.critic.q_networks[0].forward_critic(torch.as_tensor(obs))


def test_options_are_checked_and_the_deterministic_action_is_the_squashed_mean():
    params = load_site("caltech")
    observation_space, action_space = site_spaces(params)
    with pytest.raises(ValueError, match="gSDE"):
        PerPortSACPolicy(observation_space, action_space, lambda _: 1e-3, site=params, use_sde=True)
    with pytest.raises(ValueError, match="n_critics"):
        _sac_policy(params, n_critics=0)
    with pytest.raises(ValueError, match="pooling"):
        _sac_policy(params, pooling=["sum"])
    policy = _sac_policy(params, peak_room=True)
    obs = _observations(params, steps=44, num_envs=3)
    with torch.no_grad():
        expected = torch.tanh(policy.actor.network.forward_actor(torch.as_tensor(obs))).numpy()
        exported = deterministic_actor(policy)(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(policy.predict(obs, deterministic=True)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported, expected, rtol=1e-6, atol=1e-7)
    assert json.loads(json.dumps(policy.config()))["peak_room"] is True


def test_a_trained_run_saves_loads_and_acts_on_another_site(tmp_path):
    metrics = train(train_config(*SMALL_SAC), tmp_path / "run")
    assert metrics["timesteps"] >= 480
    config = json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())
    assert config["policy_kwargs"]["log_std_init"] == -3.0 and "site" not in config["policy_kwargs"]
    header = (tmp_path / "run" / "tensorboard").rglob("progress.csv").__next__().read_text().splitlines()[0]
    assert "train/critic_loss" in header and "train/ent_coef" in header
    check_run_loads_exports_and_acts_on_jpl(tmp_path)


def check_run_loads_exports_and_acts_on_jpl(tmp_path):
    """The trained run under ``tmp_path / "run"`` acts on its site, exports to ONNX with the same
    actions, and acts on jpl."""
    from agents.export.onnx_graph import write_onnx
    from agents.export.writer import onnx_actions

    trained = load_policy(tmp_path / "run")
    params = load_site("caltech", horizon_steps=24, start_hour=7)
    obs = _observations(params, steps=8, num_envs=2)
    trained.begin(params, None)
    actions, _ = trained.predict(obs)
    assert actions.shape == (2, params.num_ports) and np.all(np.abs(actions) <= 1.0)
    actor = deterministic_actor(trained.policy)
    path = write_onnx(actor, obs[:1], params.num_ports, tmp_path / "policy.onnx")
    np.testing.assert_allclose(onnx_actions(path, obs), actions, rtol=1e-5, atol=1e-5)
    jpl = load_site("jpl")
    trained.begin(jpl, None)
    on_jpl, _ = trained.predict(np.zeros((3, declared_layout(jpl).size), dtype=np.float32))
    assert on_jpl.shape == (3, jpl.num_ports)
