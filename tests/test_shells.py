"""The Gymnasium env, the native vector env and the SB3 adapter: API contracts and bookkeeping.

Episodes start at 07:00 (arrivals under way) and last a few steps, so that tests stay fast while
EVs plug, charge and leave.
"""

import json
import os
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs
from envs import core
from envs.generators import generator_for
from envs.observation import observe
from envs.reward import TERMS
from envs.sb3 import SmartChargingVecEnv
from envs.site import load_site

HORIZON = 6
SITE = {"site": "caltech", "start_hour": 7, "horizon_steps": HORIZON}
INFINITE_BOUNDS = "ignore:.*infinity.*:UserWarning"


def single(**changes):
    return envs.SmartChargingEnv(**{**SITE, **changes})


def vector(num_envs, mode=AutoresetMode.NEXT_STEP, **changes):
    return envs.SmartChargingVectorEnv(num_envs, autoreset_mode=mode, **{**SITE, **changes})


def random_actions(shape, steps, seed=1, scale=1.2):
    return np.random.default_rng(seed).uniform(-scale, scale, (steps, *shape)).astype(np.float32)


def assert_same_info(actual, expected, path="info"):
    assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_info(actual[key], value, f"{path}.{key}")
        elif isinstance(value, np.ndarray) and value.dtype == object:
            assert actual[key].dtype == object and len(actual[key]) == len(value), f"{path}.{key}"
            for a, e in zip(actual[key], value, strict=True):
                np.testing.assert_array_equal(a, e, err_msg=f"{path}.{key}")
        else:
            assert np.asarray(actual[key]).dtype == np.asarray(value).dtype, f"{path}.{key}"
            np.testing.assert_array_equal(actual[key], value, err_msg=f"{path}.{key}")


def run_python(code: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- checkers and registration ---------------------------------------------------------------

@pytest.mark.filterwarnings(INFINITE_BOUNDS, "ignore:.*render modes.*:UserWarning")
def test_gymnasium_env_checker():
    gym_check_env(single(), skip_render_check=True)


@pytest.mark.filterwarnings(INFINITE_BOUNDS)
def test_sb3_env_checker():
    from stable_baselines3.common.env_checker import check_env

    check_env(single(site="v2g_workplace"))


def test_make_and_make_vec_from_another_directory(tmp_path):
    code = """
import gymnasium as gym, numpy as np
env = gym.make("envs:SmartCharging-v0", site="caltech", horizon_steps=2)
import envs
env = gym.make("SmartCharging-v0", site="caltech")
obs, _ = env.reset(seed=0)
env.step(np.zeros(54, dtype=np.float32))
vec = gym.make_vec("SmartCharging-v0", num_envs=1024, site="caltech", horizon_steps=2)
obs, _ = vec.reset(seed=0)
vec.step(vec.action_space.sample())
print(type(env.unwrapped).__name__, type(vec.unwrapped).__name__, obs.shape)
"""
    expected = ["SmartChargingEnv", "SmartChargingVectorEnv", "(1024,", "491)"]
    assert run_python(code, tmp_path).split() == expected


def test_register_envs_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.register_envs()
        envs.register_envs()
    spec = gym.spec(envs.ENV_ID)
    assert spec.entry_point == "envs.gym_env:SmartChargingEnv"
    assert spec.vector_entry_point == "envs.vector_env:SmartChargingVectorEnv"


def test_import_envs_is_light(tmp_path):
    code = """
import json, sys, time
start = time.perf_counter()
import envs
seconds = time.perf_counter() - start
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               ("torch", "stable_baselines3", "hydra", "omegaconf", "matplotlib", "pandas", "agents"))
print(json.dumps({"seconds": seconds, "heavy": heavy}))
"""
    report = json.loads(run_python(code, tmp_path))
    assert report["heavy"] == []


def test_sb3_adapter_is_reachable_lazily(tmp_path):
    code = "import envs, sys; cls = envs.SmartChargingVecEnv; print('stable_baselines3' in sys.modules)"
    assert run_python(code, tmp_path).strip() == "True"


# --- the single env --------------------------------------------------------------------------

def test_truncated_exactly_at_horizon_and_never_terminated():
    env = gym.make("SmartCharging-v0", **SITE)
    env.reset(seed=3)
    summed = dict.fromkeys(TERMS, 0.0)
    for t, action in enumerate(random_actions((54,), HORIZON), start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        assert terminated is False and truncated is (t == HORIZON)
        assert ("episode_totals" in info) is (t == HORIZON)
        for name in TERMS:
            summed[name] += info[name]
        assert reward == pytest.approx(np.dot([info[n] for n in TERMS], env.unwrapped._coefficients))
    assert info["episode_totals"] == pytest.approx(summed, rel=1e-12, abs=1e-12)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(action)
    env.reset()
    assert env.step(action)[3] is False


def test_info_has_every_term_and_diagnostic_as_python_numbers():
    env = single()
    env.reset(seed=0)
    charged = [env.step(np.ones(54, dtype=np.float32))[4]["charged_kwh"] for _ in range(HORIZON - 1)]
    info = env.step(np.ones(54, dtype=np.float32))[4]
    assert set(TERMS) <= info.keys()
    assert {"site_power_kw", "charged_kwh", "discharged_kwh", "turned_away", "abandoned", "wait_hours",
            "action_clipped"} <= info.keys()
    assert all(type(info[key]) in (float, int) for key in info if key != "episode_totals")
    assert sum(charged) > 0


def test_same_seed_same_trajectory_different_seed_differs():
    def trajectory(seed):
        env = single()
        observations = [env.reset(seed=seed)[0]]
        for action in random_actions((54,), HORIZON):
            observations.append(env.step(action)[0])
        return np.array(observations)

    np.testing.assert_array_equal(trajectory(5), trajectory(5))
    assert not np.array_equal(trajectory(5), trajectory(6))


@pytest.mark.parametrize("site", ["caltech", "v2g_workplace"])
def test_observations_stay_in_space_over_random_rollouts(site):
    env = envs.SmartChargingEnv(site=site, start_hour=6, horizon_steps=48)
    obs, _ = env.reset(seed=11)
    assert env.observation_space.contains(obs)
    for action in random_actions(env.action_space.shape, 2 * 48, scale=1.5):
        obs, _, _, truncated, _ = env.step(action)
        assert env.observation_space.contains(obs)
        if truncated:
            obs, _ = env.reset()
            assert env.observation_space.contains(obs)


def test_vector_observations_stay_in_space():
    vec = vector(16, site="v2g_workplace")
    obs, _ = vec.reset(seed=2)
    for action in random_actions(vec.action_space.shape, 2 * HORIZON + 1, scale=1.5):
        assert vec.observation_space.contains(obs)
        obs = vec.step(action)[0]


def test_episode_totals_work_with_record_episode_statistics():
    env = gym.wrappers.RecordEpisodeStatistics(single())
    env.reset(seed=0)
    for action in random_actions((54,), HORIZON):
        info = env.step(action)[4]
    assert info["episode"]["l"] == HORIZON and "episode_totals" in info
    vec = gym.wrappers.vector.RecordEpisodeStatistics(vector(3))
    vec.reset(seed=0)
    for action in random_actions((3, 54), HORIZON):
        info = vec.step(action)[4]
    assert info["_episode"].all() and "episode_totals" in info


# --- invalid actions --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_name_env_and_port(bad):
    env = single()
    env.reset(seed=0)
    action = np.zeros(54, dtype=np.float32)
    action[7] = bad
    with pytest.raises(ValueError, match=r"env 0, port 7 \(evse7\)"):
        env.step(action)
    vec = vector(4)
    vec.reset(seed=0)
    actions = np.zeros((4, 54))
    actions[2, 5] = bad
    with pytest.raises(ValueError, match=r"env 2, port 5 \(evse5\)"):
        vec.step(actions)
    adapter = SmartChargingVecEnv(3, **SITE)
    adapter.reset()
    actions = np.zeros((3, 54), dtype=np.float32)
    actions[1, 50] = bad
    with pytest.raises(ValueError, match=r"env 1, port 50 \(evse50\)"):
        adapter.step(actions)


def test_wrong_action_shapes_are_refused():
    env = single()
    env.reset(seed=0)
    for shape in [(53,), (1, 54), ()]:
        with pytest.raises(ValueError, match=r"per port of site 'caltech' \(env 0\)"):
            env.step(np.zeros(shape))
    vec = vector(4)
    vec.reset(seed=0)
    for shape in [(4, 53), (3, 54), (54,)]:
        with pytest.raises(ValueError, match=r"envs, ports of site 'caltech'"):
            vec.step(np.zeros(shape))


@pytest.mark.parametrize("make", [lambda n: np.full(n, "0.5"), lambda n: np.full(n, 0.5 + 0j),
                                  lambda n: np.zeros(n, "datetime64[s]"), lambda n: np.full(n, None)],
                         ids=["text", "complex", "datetime", "object"])
def test_every_shell_refuses_non_numeric_actions_with_the_core_message(make):
    params = load_site(**SITE)
    state = core.reset(params, generator_for(params).sample(params, np.random.default_rng(0), 2))
    with pytest.raises(ValueError) as from_core:
        core.step(params, state, make((2, 54)))
    assert str(from_core.value).endswith("expected a float array")
    env = single()
    env.reset(seed=0)
    vec = vector(2)
    vec.reset(seed=0)
    adapter = SmartChargingVecEnv(2, **SITE)
    adapter.reset()
    for shell_step, shape in ((env.step, (54,)), (vec.step, (2, 54)), (adapter.step, (2, 54))):
        with pytest.raises(ValueError) as from_shell:
            shell_step(make(shape))
        assert str(from_shell.value) == str(from_core.value)


def test_numeric_actions_of_any_real_dtype_still_step():
    vec = vector(2)
    vec.reset(seed=0)
    for action in (np.ones((2, 54), np.int8), np.ones((2, 54), bool), [[0.5] * 54] * 2):
        assert vec.step(action)[1].shape == (2,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caller_action_is_not_modified(dtype):
    action = random_actions((4, 54), 1, scale=3.0)[0].astype(dtype)
    before = action.copy()
    env = single()
    env.reset(seed=0)
    env.step(action[0])
    vec = vector(4)
    vec.reset(seed=0)
    vec.step(action)
    adapter = SmartChargingVecEnv(4, **SITE)
    adapter.reset()
    adapter.step(action)
    np.testing.assert_array_equal(action, before)
    assert action.dtype == dtype


# --- the vector env ---------------------------------------------------------------------------

def test_vector_env_equals_the_core_with_the_same_rng():
    n, seed = 5, 42
    vec = vector(n)
    actions = random_actions((n, 54), 2 * HORIZON)
    obs, _ = vec.reset(seed=seed)
    params = load_site(**SITE)
    rng = np.random.default_rng(seed)
    state = core.reset(params, generator_for(params).sample(params, rng, n))
    np.testing.assert_array_equal(obs, observe(params, state))
    for t in range(2 * HORIZON):
        if t == HORIZON:
            state = core.reset(params, generator_for(params).sample(params, rng, n))
            np.testing.assert_array_equal(vec.step(actions[t])[0], observe(params, state))
        obs, rewards, _, _, info = vec.step(actions[t])
        state, terms, diagnostics = core.step(params, state, actions[t].astype(np.float64))
        np.testing.assert_array_equal(obs, observe(params, state))
        np.testing.assert_array_equal(rewards, terms @ params.reward.coefficients())
        for i, name in enumerate(TERMS):
            np.testing.assert_array_equal(info[name], terms[:, i])
        for name, value in diagnostics.items():
            np.testing.assert_array_equal(info[name], value)


def test_vector_env_same_seed_same_different_seed_differs():
    def trajectory(seed):
        vec = vector(4)
        out = [vec.reset(seed=seed)[0]]
        for action in random_actions((4, 54), HORIZON + 2):
            out.append(vec.step(action)[0])
        return np.array(out)

    np.testing.assert_array_equal(trajectory(9), trajectory(9))
    assert not np.array_equal(trajectory(9), trajectory(10))


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_vector_env_matches_sync_vector_env_in_every_autoreset_mode(mode):
    """With one env, the native vector env and SyncVectorEnv over the single env draw the same
    episodes, so every output (obs, rewards, flags, info with masks, final_obs, final_info)
    must be identical, including across the autoreset."""
    native = vector(1, mode)
    reference = SyncVectorEnv([single], autoreset_mode=mode)
    assert native.metadata["autoreset_mode"] is mode is reference.metadata["autoreset_mode"]
    for got, want in zip(native.reset(seed=4), reference.reset(seed=4), strict=True):
        assert_same_info({"x": got}, {"x": want})
    done = False
    for t, action in enumerate(random_actions((1, 54), 2 * HORIZON + 2)):
        if mode is AutoresetMode.DISABLED and done:
            with pytest.raises(RuntimeError, match="DISABLED"):
                native.step(action)
            with pytest.raises(AssertionError):
                reference.step(action)
            options = {"reset_mask": np.ones(1, dtype=bool)}
            native.reset(options=dict(options))
            reference.reset(options=dict(options))
        got, want = native.step(action), reference.step(action)
        names = ("obs", "rewards", "terminated", "truncated")
        for name, a, b in zip(names, got[:4], want[:4], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, (t, name)
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}: {name}")
        assert_same_info(got[4], want[4], f"step {t} info")
        done = bool(got[3][0])


def test_same_step_autoreset_reports_the_final_step():
    n = 3
    actions = random_actions((n, 54), HORIZON)
    next_step, same_step = vector(n), vector(n, AutoresetMode.SAME_STEP)
    next_step.reset(seed=1)
    same_step.reset(seed=1)
    for action in actions:
        want = next_step.step(action)
        got = same_step.step(action)
    obs, rewards, terminated, truncated, info = got
    assert truncated.all() and not terminated.any()
    assert set(info) == {"final_obs", "_final_obs", "final_info", "_final_info"}
    np.testing.assert_array_equal(np.stack(info["final_obs"]), want[0])
    np.testing.assert_array_equal(rewards, want[1])
    assert_same_info(info["final_info"], want[4])
    np.testing.assert_array_equal(obs, next_step.step(actions[0])[0])


def test_partial_reset_mask_is_refused():
    vec = vector(3, AutoresetMode.DISABLED)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="every env"):
        vec.reset(options={"reset_mask": np.array([True, False, True])})
    with pytest.raises(TypeError, match="one generator"):
        vec.reset(seed=[1, 2, 3])


def test_make_vec_uses_the_native_vector_env():
    vec = gym.make_vec(envs.ENV_ID, num_envs=8, **SITE)
    assert isinstance(vec.unwrapped, envs.SmartChargingVectorEnv) and vec.num_envs == 8
    assert vec.single_observation_space.shape == (491,) and vec.observation_space.shape == (8, 491)
    assert vec.action_space.shape == (8, 54) and vec.action_space.dtype == np.float32


# --- the SB3 adapter --------------------------------------------------------------------------

def test_sb3_terminal_observation_matches_the_single_env():
    seed = 8
    adapter = SmartChargingVecEnv(1, **SITE)
    adapter.seed(seed)
    env = single()
    single_obs, _ = env.reset(seed=seed)
    np.testing.assert_array_equal(adapter.reset()[0], single_obs)
    single_return = 0.0
    for t, action in enumerate(random_actions((1, 54), 2 * HORIZON), start=1):
        obs, rewards, dones, infos = adapter.step(action)
        single_obs, reward, _, truncated, single_info = env.step(action[0])
        single_return += reward
        assert rewards.dtype == np.float32 and rewards[0] == np.float32(reward)
        assert dones[0] == truncated == (t % HORIZON == 0)
        for name in TERMS:
            assert infos[0][name] == single_info[name]
        if truncated:
            info = infos[0]
            np.testing.assert_array_equal(info["terminal_observation"], single_obs)
            assert info["TimeLimit.truncated"] is True
            assert info["episode"]["l"] == HORIZON
            assert info["episode"]["r"] == pytest.approx(single_return, rel=1e-12)
            assert info["episode_totals"] == single_info["episode_totals"]
            single_obs, _ = env.reset()
            single_return = 0.0
        else:
            assert "terminal_observation" not in infos[0]
        np.testing.assert_array_equal(obs[0], single_obs)


def test_sb3_batch_terminal_observations_match_the_vector_env():
    n = 4
    adapter = SmartChargingVecEnv(n, **SITE)
    vec = vector(n)
    adapter.seed(3)
    adapter.reset()
    vec.reset(seed=3)
    for action in random_actions((n, 54), HORIZON):
        obs, _, dones, infos = adapter.step(action)
        final = vec.step(action)[0]
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    np.testing.assert_array_equal(np.stack([info["terminal_observation"] for info in infos]), final)
    np.testing.assert_array_equal(obs, vec.step(action)[0])


def test_sb3_step_info_can_be_left_out():
    adapter = SmartChargingVecEnv(2, step_info=False, **SITE)
    adapter.reset()
    for t, action in enumerate(random_actions((2, 54), HORIZON), start=1):
        infos = adapter.step(action)[3]
        assert (infos == [{}, {}]) is (t < HORIZON)
    assert {"terminal_observation", "TimeLimit.truncated", "episode", "episode_totals",
            "episode_outcome"} == infos[0].keys()


def test_sb3_attributes_methods_and_evaluation():
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    class Idle:
        def predict(self, observation, state=None, episode_start=None, deterministic=True):
            return np.zeros((len(observation), 54), dtype=np.float32), None

    adapter = SmartChargingVecEnv(3, **SITE)
    assert adapter.get_attr("params", [0, 2]) == [adapter.params] * 2
    assert adapter.get_attr("render_mode") == [None] * 3
    adapter.set_attr("note", "x")
    assert adapter.get_attr("note", 1) == ["x"]
    with pytest.raises(ValueError, match="every env"):
        adapter.set_attr("note", "y", indices=[0])
    assert adapter.env_method("reset", seed=0, indices=[1])[0][0].shape == (3, 491)
    assert adapter.env_is_wrapped(Monitor) == [True] * 3
    assert adapter.env_is_wrapped(gym.Wrapper) == [False] * 3
    adapter.seed(0)
    rewards, lengths = evaluate_policy(Idle(), adapter, n_eval_episodes=3, return_episode_rewards=True)
    assert lengths == [HORIZON] * 3 and all(np.isfinite(rewards))


def test_sb3_ppo_trains_on_the_adapter_and_logs_episodes():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(SmartChargingVecEnv(2, **SITE))
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=32)
    assert len(model.ep_info_buffer) == 4
    assert all(info["l"] == HORIZON and np.isfinite(info["r"]) for info in model.ep_info_buffer)
