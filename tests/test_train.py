"""Training: configs that compose and build, the run directory, determinism, resume after kill -9,
and trained policies loaded without pickle behind the baselines' predictor protocol."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agents import load_policy
from agents.baselines import Uncontrolled
from agents.checkpoints import list_checkpoints, save_checkpoint
from agents.evaluate import evaluate
from agents.policy_io import CONFIG_FILE, PolicyFileError
from agents.train import TrainConfigError, build_env, build_model, site_params, train, trained_policy
from envs.observation import observe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
AGENTS = sorted(path.stem for path in (CONFIGS / "agent").glob("*.yaml"))
ENVS = sorted(path.stem for path in (CONFIGS / "env").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))
LAUNCHERS = sorted(path.stem for path in (CONFIGS / "hydra" / "launcher").glob("*.yaml"))
SWEEPERS = sorted(path.stem for path in (CONFIGS / "hydra" / "sweeper").glob("*.yaml"))
TINY = ["+site.overrides.horizon_steps=24", "+site.overrides.start_hour=7", "n_envs=4", "agent.n_steps=24",
        "agent.batch_size=48", "agent.n_epochs=2", "total_timesteps=480", "eval_episodes=2",
        "eval_freq=192", "checkpoint_freq=192", "progress_bar=false"]


def train_config(*overrides, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_config)
    return cfg if hydra_config else OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("agent", AGENTS)
def test_every_agent_config_builds_its_model(agent):
    cfg = train_config(f"agent={agent}", "+site.overrides.horizon_steps=4", "n_envs=2")
    params = site_params(cfg)
    model = build_model(cfg["agent"], build_env(cfg, params), params, seed=0)
    assert type(model).__name__ == cfg["agent"]["_target_"].rsplit(".", 1)[1]
    assert model.action_space.shape == (params.num_ports,)


@pytest.mark.parametrize("env", ENVS)
def test_every_env_config_builds_the_training_env(env):
    cfg = train_config(f"env={env}", "+site.overrides.horizon_steps=4", "n_envs=2")
    venv = build_env(cfg, site_params(cfg))
    assert venv.reset().shape[0] == 2
    normalizes = cfg["env"]["normalize_obs"] or cfg["env"]["normalize_reward"]
    assert (type(venv).__name__ == "VecNormalize") == bool(normalizes)
    assert not normalizes or venv.norm_obs == cfg["env"]["normalize_obs"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_overlays_the_run_config(experiment):
    cfg = train_config(f"experiment={experiment}")
    assert cfg["total_timesteps"] >= (0 if cfg.get("imitation") else 1) and cfg["agent"]["_target_"]
    assert site_params(cfg).num_ports >= 1


def test_clone_mpc_12h_is_clone_mpc_with_a_longer_window_and_a_harder_fit():
    base, tuned = train_config("experiment=clone_mpc"), train_config("experiment=clone_mpc_12h")
    assert tuned["imitation"]["teacher"]["horizon_steps"] == 48
    assert tuned["imitation"]["teacher"]["departure_margin_hours"] == 1.5
    assert tuned["env"]["deadline_guard_hours"] == 1.0
    assert tuned["agent"]["policy_kwargs"]["hidden_dim"] > base["agent"]["policy_kwargs"]["hidden_dim"]
    assert tuned["imitation"]["episodes"] > base["imitation"]["episodes"]
    kept = ("dagger_rounds", "dagger_epochs", "seed", "final_learning_rate")
    assert {key: tuned["imitation"][key] for key in kept} == {key: base["imitation"][key] for key in kept}
    assert tuned["agent"]["learning_rate"] == base["agent"]["learning_rate"]


def test_clone_mpc_ranked_is_the_benchmarks_variant():
    ranked = train_config("experiment=clone_mpc_ranked")
    variant = train_config("experiment=clone_mpc_12h", "imitation.dagger_rounds=4",
                           "+agent.policy_kwargs.price_ranks=true")
    assert ranked == variant
    assert ranked["agent"]["policy_kwargs"]["price_ranks"] is True
    assert ranked["imitation"]["dagger_rounds"] == 4


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_config_composes(launcher):
    cfg = train_config(f"hydra/launcher={launcher}", hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")


@pytest.mark.parametrize("sweeper", SWEEPERS)
def test_every_sweeper_config_composes(sweeper):
    cfg = train_config(f"hydra/sweeper={sweeper}", hydra_config=True)
    assert cfg.hydra.sweeper._target_.startswith("hydra_plugins.")


def test_training_reward_weights_are_validated():
    cfg = train_config("+env.reward.unmet_eur_per_kw=2", "+site.overrides.horizon_steps=4", "n_envs=2")
    with pytest.raises(TrainConfigError, match="env.reward.unmet_eur_per_kw"):
        build_env(cfg, site_params(cfg))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train(train_config(*TINY), run_dir)


def test_a_run_writes_checkpoints_tensorboard_policy_and_metrics(tiny_run):
    run_dir, metrics = tiny_run
    assert metrics["timesteps"] >= 480 and metrics["target_timesteps"] == 480
    assert np.isfinite(metrics["score"]) and "resumed_from_timestep" not in metrics
    assert json.loads((run_dir / "metrics.json").read_text())["score"] == pytest.approx(metrics["score"])
    assert {"unmet_pct", "profit_eur", "grid_violation_kwh"} <= set(metrics["validation"]["kpis"])
    steps = [checkpoint.timesteps for checkpoint in list_checkpoints(run_dir / "checkpoints")]
    assert steps[-1] == metrics["timesteps"] and len(steps) == 2
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    with open(run_dir / "tensorboard" / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"kpi/profit_eur", "kpi/unmet_pct", "kpi/overload_kwh", "kpi/peak_kw", "kpi/v2g_kwh",
            "reward/energy_cost_eur", "eval/score", "eval/unmet_pct", "train/loss"} <= set(rows[0])
    evaluations = [row for row in rows if row.get("eval/score")]
    steps = [int(float(row["eval/timesteps"])) for row in evaluations]
    assert steps == [0, 192, 384, metrics["timesteps"]]  # before training, every eval_freq, at the end
    elapsed = [float(row["eval/training_s"]) for row in evaluations]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] <= metrics["wall_s"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "eval/day" in events.Tags()["images"]


def test_loaded_policy_acts_like_the_trained_one_and_runs_in_evaluate(tiny_run):
    run_dir, _ = tiny_run
    policy = load_policy(run_dir)
    assert load_policy(run_dir / "policy").config == policy.config
    cfg = train_config(*TINY)
    params = site_params(cfg)
    from envs.core import reset
    from envs.generators import generator_for

    state = reset(params, generator_for(params).sample(params, np.random.default_rng(5), 3))
    actions, hidden = policy.predict(observe(params, state))
    assert hidden is None and actions.shape == (3, params.num_ports) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    single, _ = policy.predict(observe(params, state)[0])
    np.testing.assert_allclose(single, actions[0], atol=1e-6)
    table = evaluate({"uncontrolled": Uncontrolled(params), "trained": policy}, params, 2, seed=3)
    assert list(table.index) == ["uncontrolled", "trained"]


def test_a_policy_folder_runs_no_code_it_names(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    folder = tmp_path / "policy"
    folder.mkdir()
    for path in (run_dir / "policy").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["algorithm"] = "os.system"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PolicyFileError, match="os.system"):
        load_policy(folder)
    with pytest.raises(PolicyFileError, match="neither a run directory"):
        load_policy(tmp_path / "nothing")


def test_a_policy_trained_on_one_site_refuses_another_it_cannot_read(tiny_run):
    from envs.site import load_site

    policy = load_policy(tiny_run[0])
    other = load_site("v2g_workplace")
    with pytest.raises(PolicyFileError, match="v2g_workplace"):
        policy.begin(other, None)


def _losses(run_dir: Path) -> list[tuple]:
    with open(run_dir / "tensorboard" / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = ("train/loss", "train/value_loss", "train/policy_gradient_loss", "eval/score")
    return [tuple(row[key] for key in keys) for row in rows if row.get("train/loss") or row.get("eval/score")]


def test_same_seed_gives_the_same_updates(tmp_path):
    overrides = [*TINY, "total_timesteps=192", "eval_freq=96", "checkpoint_freq=0"]
    first = train(train_config(*overrides), tmp_path / "a")
    second = train(train_config(*overrides), tmp_path / "b")
    other = train(train_config(*overrides, "seed=1"), tmp_path / "c")
    assert len(_losses(tmp_path / "a")) >= 3
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert first["score"] == second["score"]
    assert _losses(tmp_path / "a") != _losses(tmp_path / "c") or first["score"] != other["score"]


def test_resume_needs_a_checkpoint_and_a_used_run_directory_needs_resume(tmp_path):
    cfg = train_config(*TINY, "resume=true")
    with pytest.raises(TrainConfigError, match="no checkpoint"):
        train(cfg, tmp_path)
    params = site_params(cfg)
    model = build_model(cfg["agent"], build_env(cfg, params), params, seed=0)
    save_checkpoint(tmp_path / "checkpoints", model, cfg, {})
    with pytest.raises(TrainConfigError, match="resume=true"):
        train(train_config(*TINY), tmp_path)


def test_keep_best_keeps_the_policy_of_the_best_validation_score_across_a_resume(tmp_path):
    from agents.validation import Validation

    overrides = [*TINY, "eval_freq=96", "checkpoint_freq=96", "keep_best=true"]
    first = train(train_config(*overrides), tmp_path)
    with open(tmp_path / "tensorboard" / "progress.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("eval/score")]
    scores = {int(row["eval/timesteps"]): float(row["eval/score"]) for row in rows}
    assert len(scores) >= 4 and first["best_score"] == pytest.approx(max(scores.values()))
    assert scores[first["best_timesteps"]] == pytest.approx(first["best_score"])
    params = site_params(train_config(*overrides))
    _, replayed = Validation(params, 2, 900_001).score(load_policy(tmp_path / "best_policy"))
    assert replayed == pytest.approx(first["best_score"], abs=1e-9)
    second = train(train_config(*overrides, "resume=true"), tmp_path)  # re-scores the same final policy
    assert (second["best_score"], second["best_timesteps"]) == (first["best_score"], first["best_timesteps"])
    assert not (tmp_path / "best_policy.partial").exists()
    with pytest.raises(TrainConfigError, match="keep_best must be true or false, got 'yes'"):
        train(train_config(*TINY, "keep_best=yes"), tmp_path / "refused")


def test_trained_policy_normalizes_with_frozen_statistics(tmp_path):
    cfg = train_config(*TINY)
    params = site_params(cfg)
    env = build_env(cfg, params)
    model = build_model(cfg["agent"], env, params, seed=0)
    env.reset()
    env.obs_rms.mean[:] = 3.0
    policy = trained_policy(model, cfg, params)
    env.obs_rms.mean[:] = 5.0
    assert np.all(policy.obs_mean == 3.0)


def test_kill_minus_9_then_resume_loses_at_most_the_work_since_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "total_timesteps=4800",
               "checkpoint_freq=96", "eval_freq=0", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list_checkpoints(run_dir / "checkpoints")) < 2:
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    last = list_checkpoints(run_dir / "checkpoints")[-1].timesteps
    assert 0 < last < 4800
    subprocess.run([*command, "resume=true", "total_timesteps=1"], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_timestep"] == last
    assert metrics["target_timesteps"] == 4800 and metrics["timesteps"] >= 4800
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def _sweep(tmp_path, *overrides) -> Path:
    sweep_dir = tmp_path / "sweep"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *TINY, "total_timesteps=96",
                    "eval_freq=0", "checkpoint_freq=0", f"hydra.sweep.dir={sweep_dir}", *overrides],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    return sweep_dir


def test_optuna_sweep_runs_trials_in_parallel_jobs_and_maximizes_the_score(tmp_path):
    sweep_dir = _sweep(tmp_path, "hydra/sweeper=ppo_search", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.n_jobs=2")
    scores = [json.loads((sweep_dir / job / "metrics.json").read_text())["score"] for job in ("0", "1")]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(scores))
    assert "agent.learning_rate" in results.best_params


def test_submitit_local_launcher_runs_a_sweep_job(tmp_path):
    sweep_dir = _sweep(tmp_path, "hydra/launcher=submitit_local", "seed=3")
    assert json.loads((sweep_dir / "0" / "metrics.json").read_text())["seed"] == 3


def test_a_per_port_policy_reloads_and_runs_on_other_sites(tmp_path):
    overrides = [*TINY, "agent=ppo_perport", "env=physical", "env.deadline_guard_hours=1.0",
                 "imitation=optimum", "imitation.episodes=2", "imitation.epochs=2", "total_timesteps=96",
                 "eval_freq=0"]
    metrics = train(train_config(*overrides), tmp_path)
    policy = load_policy(tmp_path)
    assert policy.config["deadline_guard_hours"] == 1.0 and np.isfinite(metrics["score"])
    from envs.site import load_site

    for site in ("jpl", "v2g_workplace"):
        params = load_site(site, horizon_steps=8, start_hour=8)
        table = evaluate({"uncontrolled": Uncontrolled(params), "per_port": policy}, params, 2, seed=3)
        assert table.loc["per_port", "grid_violation_kwh"] == pytest.approx(0.0, abs=1e-6)


def test_validation_scores_as_the_evaluation_does():
    from agents.baselines import EarliestDeadlineFirst
    from agents.evaluate import run_policies
    from agents.optimal import OfflineOptimal
    from agents.validation import Validation
    from envs.site import load_site

    params = load_site("caltech", horizon_steps=32, start_hour=6)
    validation = Validation(params, 4, seed=11)
    table, score = validation.score(EarliestDeadlineFirst(params))
    result = run_policies({"uncontrolled": Uncontrolled(params), "optimum": OfflineOptimal(params),
                           "edf": EarliestDeadlineFirst(params)}, params, validation.episodes)
    assert np.isfinite(score) and len(table) == 4
    assert score == pytest.approx(result.summary().loc["edf", "score"], rel=1e-9)


@pytest.mark.parametrize(("override", "words"), [
    ("n_envs=2.5", "n_envs must be a whole number"),
    ("total_timesteps=-5", "total_timesteps must be >= 0"),
    ("eval_episodes=0", "eval_episodes must be >= 1"),
    ("n_envs=1000000000", "n_envs"),
])
def test_bad_counts_are_config_errors_naming_the_key(tmp_path, override, words):
    from envs.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        train(train_config(*TINY, override), tmp_path)


def test_a_run_can_start_from_a_saved_policy_and_refuses_one_that_does_not_fit(tiny_run, tmp_path):
    import torch

    run_dir, _ = tiny_run
    again = train_config(*TINY, f"init_policy={run_dir}", "total_timesteps=0", "eval_freq=0")
    train(again, tmp_path / "again")
    before, after = load_policy(run_dir), load_policy(tmp_path / "again")
    for name, tensor in before.policy.state_dict().items():
        torch.testing.assert_close(after.policy.state_dict()[name], tensor)
    np.testing.assert_allclose(after.obs_mean, before.obs_mean)
    with pytest.raises(TrainConfigError, match="init_policy"):
        train(train_config(*TINY, "agent=ppo_perport", "env=physical", f"init_policy={run_dir}",
                           "total_timesteps=0"), tmp_path / "refused")


def test_a_policy_refuses_a_site_that_reads_its_actions_otherwise(tiny_run):
    from agents.policy_io import PolicyFileError
    from envs.site import load_site

    run_dir, _ = tiny_run
    trained = load_policy(run_dir)
    assert trained.config["action_mode"] == "signed" and trained.config["site_bidirectional"] is False
    params = load_site("caltech", horizon_steps=24, start_hour=7)
    trained.begin(params, None)
    from envs.core import reset
    from envs.generators import generator_for

    obs = observe(params, reset(params, generator_for(params).sample(params, np.random.default_rng(5), 3)))
    signed, _ = trained.predict(obs)
    assert signed.min() < 0.0
    trained.begin(params.replace(action_mode="unit"), None)  # one-way: a negative action is off either way
    np.testing.assert_array_equal(trained.predict(obs)[0], np.maximum(signed, 0.0))
    with pytest.raises(PolicyFileError, match="action_mode 'signed' cannot act on site 'v2g_workplace' with "
                                              "action_mode 'unit'"):
        trained.begin(load_site("v2g_workplace", action_mode="unit"), None)
    with pytest.raises(PolicyFileError, match="action_mode 'priority'"):
        trained.begin(params.replace(action_mode="priority"), None)
    unit = {**trained.config, "action_mode": "unit"}
    trained.config = {**unit, "site_bidirectional": False}  # charge fractions, as signed ones in [0, 1]
    trained.begin(params, None)
    for bidirectional in (True, None):  # 2 a - 1 on its training site, or not known
        trained.config = {**unit, "site_bidirectional": bidirectional}
        with pytest.raises(PolicyFileError, match="action_mode 'unit' cannot act on site 'caltech'"):
            trained.begin(params, None)
    legacy = {key: value for key, value in unit.items() if key not in ("action_mode", "site_bidirectional")}
    trained.config = legacy  # saved before the keys existed: trained on signed actions
    trained.begin(params, None)


def test_init_log_std_replaces_only_the_loaded_log_std_and_needs_an_init_policy(tiny_run, tmp_path):
    import torch

    from envs.errors import ConfigError

    run_dir, _ = tiny_run
    narrow = train_config(*TINY, f"init_policy={run_dir}", "init_log_std=-3", "total_timesteps=0",
                          "eval_freq=0")
    train(narrow, tmp_path / "narrow")
    before, after = load_policy(run_dir), load_policy(tmp_path / "narrow")
    for name, tensor in before.policy.state_dict().items():
        if name == "log_std":
            torch.testing.assert_close(after.policy.state_dict()[name], torch.full_like(tensor, -3.0))
            assert not torch.allclose(tensor, torch.full_like(tensor, -3.0))
        else:
            torch.testing.assert_close(after.policy.state_dict()[name], tensor)
    with pytest.raises(TrainConfigError, match="init_log_std.*has none"):
        train(train_config(*TINY, "init_log_std=-3"), tmp_path / "alone")
    with pytest.raises(ConfigError, match="init_log_std must be a number"):
        train(train_config(*TINY, f"init_policy={run_dir}", "init_log_std=wide", "total_timesteps=0"),
              tmp_path / "bad")
