"""agents/perport_recurrent.py: RecurrentPPO with the per-port network and an LSTM over the site."""

import json

import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO

from agents.networks import site_spaces
from agents.perport_recurrent import PerPortRecurrentPolicy
from agents.policy_io import load_policy
from agents.train import train
from envs.observation import declared_layout
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site
from tests.test_networks import _observations, _permute_ports
from tests.test_train import train_config


def _policy(site, **kwargs) -> PerPortRecurrentPolicy:
    env = SmartChargingVecEnv(num_envs=2, site=site, step_info=False)
    torch.manual_seed(0)
    return RecurrentPPO(PerPortRecurrentPolicy, env, n_steps=8, batch_size=16, seed=0,
                        policy_kwargs={"site": env.params, **kwargs}).policy


def _means(policy, sequence, starts):
    """Action means along a sequence of observation batches, carrying the hidden state."""
    states, out = None, []
    for obs, start in zip(sequence, starts, strict=True):
        if states is None:
            zeros = torch.zeros((1, obs.shape[0], policy.lstm_output_dim))
            states = (zeros, zeros)
        with torch.no_grad():
            distribution, states = policy.get_distribution(torch.as_tensor(obs), states,
                                                           torch.full((obs.shape[0],), float(start)))
        out.append(distribution.distribution.mean.numpy())
    return out


def test_actions_follow_a_port_permutation_and_depend_on_what_came_before():
    params = load_site("caltech")
    policy = _policy(params)
    with torch.no_grad():
        for lstm in (policy.lstm_actor, policy.lstm_critic):
            for weight in lstm.parameters():
                weight.normal_(0.0, 0.5)
        for name, weight in policy.mlp_extractor.named_parameters():
            if name.startswith("action_head"):
                weight.normal_(0.0, 0.5)
    sequence = [_observations(params, steps=steps, num_envs=3, seed=4) for steps in (30, 34, 38)]
    order = np.random.default_rng(6).permutation(params.num_ports)
    moved = [_permute_ports(params, obs, order) for obs in sequence]
    means = _means(policy, sequence, [1, 0, 0])
    for mean, moved_mean in zip(means, _means(policy, moved, [1, 0, 0]), strict=True):
        np.testing.assert_allclose(moved_mean, mean[:, order], rtol=1e-5, atol=1e-6)
    fresh = _means(policy, sequence[2:], [1])[0]
    assert not np.allclose(fresh, means[2], atol=1e-4)  # the memory of earlier steps moves the actions
    restarted = _means(policy, sequence, [1, 0, 1])[2]
    np.testing.assert_allclose(restarted, fresh, rtol=1e-5, atol=1e-6)  # an episode start forgets them
    assert all(params.num_ports not in tensor.shape and declared_layout(params).size not in tensor.shape
               for tensor in policy.state_dict().values())


def test_options_are_checked_by_name():
    params = load_site("caltech")
    spaces_ = site_spaces(params)
    with pytest.raises(ValueError, match="gSDE"):
        PerPortRecurrentPolicy(*spaces_, lambda _: 1e-3, site=params, use_sde=True)
    with pytest.raises(ValueError, match="shared_lstm must be false and enable_critic_lstm true"):
        PerPortRecurrentPolicy(*spaces_, lambda _: 1e-3, site=params, shared_lstm=True,
                               enable_critic_lstm=False)
    with pytest.raises(ValueError, match="enable_critic_lstm"):
        PerPortRecurrentPolicy(*spaces_, lambda _: 1e-3, site=params, enable_critic_lstm=False)
    with pytest.raises(ValueError, match="lstm_hidden_size"):
        PerPortRecurrentPolicy(*spaces_, lambda _: 1e-3, site=params, lstm_hidden_size=0)
    with pytest.raises(ValueError, match="pooling"):
        PerPortRecurrentPolicy(*spaces_, lambda _: 1e-3, site=params, pooling=["sum"])


def test_a_trained_run_loads_keeps_its_memory_and_acts_on_another_site(tmp_path):
    overrides = ["agent=recurrent_ppo_perport", "env=physical", "+site.overrides.horizon_steps=24",
                 "+site.overrides.start_hour=7", "n_envs=4", "agent.n_steps=24", "agent.batch_size=48",
                 "agent.n_epochs=2", "total_timesteps=480", "eval_episodes=2", "eval_freq=240",
                 "checkpoint_freq=240", "progress_bar=false"]
    metrics = train(train_config(*overrides), tmp_path / "run")
    assert metrics["timesteps"] >= 480
    config = json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())
    assert config["policy_kwargs"]["lstm_hidden_size"] == 32
    trained = load_policy(tmp_path / "run")
    assert trained.recurrent
    params = load_site("caltech", horizon_steps=24, start_hour=7)
    sequence = [_observations(params, steps=steps, num_envs=2, seed=2) for steps in (4, 8)]
    trained.begin(params, None)
    first = [trained.predict(obs)[0] for obs in sequence]
    trained.begin(params, None)
    np.testing.assert_array_equal([trained.predict(obs)[0] for obs in sequence][1], first[1])
    trained.begin(params, None)
    assert not np.array_equal(trained.predict(sequence[1])[0], first[1])  # without the step before it
    jpl = load_site("jpl")
    trained.begin(jpl, None)
    on_jpl, _ = trained.predict(np.zeros((3, declared_layout(jpl).size), dtype=np.float32))
    assert on_jpl.shape == (3, jpl.num_ports)
