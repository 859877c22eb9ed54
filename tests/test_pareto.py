"""The Pareto sweep: the non-dominated filter, the weight grid, a tiny sweep with MPC over weights, a trained
run labelled by its training weight and the baselines, and what a higher unmet weight does to MPC."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from agents.evaluate import episodes_for, run_policies
from agents.mpc import ModelPredictiveControl
from agents.pareto import (
    ParetoError,
    WeightedPlanner,
    non_dominated,
    pareto_table,
    run_pareto,
    trained_weights,
    weight_grid,
)
from envs.reward import RewardWeights
from envs.site import load_site

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_SITE = ["+site.overrides.horizon_steps=16", "+site.overrides.start_hour=7"]
TINY_TRAINING = [*TINY_SITE, "n_envs=2", "agent.n_steps=16", "agent.batch_size=32", "agent.n_epochs=1",
                 "total_timesteps=32", "eval_episodes=1", "eval_freq=0", "checkpoint_freq=0",
                 "progress_bar=false"]


def compose_config(name, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_non_dominated_on_a_hand_made_table():
    points = np.array([
        [1.0, 5.0],  # front: cheapest
        [2.0, 3.0],  # front
        [2.0, 4.0],  # dominated by the row above (equal cost, more unmet)
        [3.0, 3.0],  # dominated by [2, 3]
        [4.0, 1.0],  # front: least unmet
        [4.0, 1.0],  # equal to the row above: both stay
        [np.nan, 0.0],  # no cost measured: never on the front
        [5.0, 2.0],  # dominated by [4, 1]
    ])
    assert non_dominated(points).tolist() == [True, True, False, False, True, True, False, False]
    assert non_dominated(np.empty((0, 2))).tolist() == []


def test_pareto_table_flags_fronts_and_leaves_out_the_optimum():
    policies = ["cheap", "careful", "wasteful", "optimum"]
    summary = pd.DataFrame({"profit_eur": [10.0, 8.0, 7.0, 12.0], "unmet_kwh": [9.0, 1.0, 2.0, 0.0],
                            "mean_wait_hours": [0.2, 0.2, 0.1, 0.2]}, index=policies)
    for column in ("profit_eur", "unmet_kwh", "mean_wait_hours"):
        summary[f"{column}_low"], summary[f"{column}_high"] = summary[column] - 1, summary[column] + 1
    for column in ("energy_cost_eur", "charging_revenue_eur", "export_revenue_eur", "unmet_pct",
                   "peak_import_kw", "reward_eur", "solver_fallbacks", "episodes", "score"):
        summary[column] = 0.0
    kinds = {"cheap": "baseline", "careful": "mpc", "wasteful": "trained", "optimum": "optimum"}
    table = pareto_table(summary, kinds, {"careful": {"unmet_eur_per_kwh": 2.0}}, ["unmet_eur_per_kwh"])
    assert table["net_cost_eur"].tolist() == [-10.0, -8.0, -7.0, -12.0]
    assert table.loc["cheap", "net_cost_eur_low"] == -11.0 and table.loc["cheap", "net_cost_eur_high"] == -9.0
    assert table["unmet_eur_per_kwh"].tolist()[1] == 2.0 and np.isnan(table.loc["cheap", "unmet_eur_per_kwh"])
    assert table["front_unmet"].tolist() == [True, True, False, False]
    assert table["front_wait"].tolist() == [True, False, True, False]
    assert table["on_front"].tolist() == [True, True, True, False]


def test_weight_grid_is_the_product_of_known_weights():
    grid = weight_grid({"unmet_eur_per_kwh": [0, 2], "demand_charge_eur_per_kw": [0.5]})
    assert grid == [{"unmet_eur_per_kwh": 0.0, "demand_charge_eur_per_kw": 0.5},
                    {"unmet_eur_per_kwh": 2.0, "demand_charge_eur_per_kw": 0.5}]
    for bad in ({}, {"unmet": [1.0]}, {"unmet_eur_per_kwh": []}, {"unmet_eur_per_kwh": [-1.0]},
                {"unmet_eur_per_kwh": "1"}):
        with pytest.raises(ParetoError):
            weight_grid(bad)


def test_a_higher_unmet_weight_leaves_mpc_less_unmet_energy_on_the_same_episodes():
    params = load_site("caltech", horizon_steps=16, start_hour=7)
    episode = episodes_for(params, num_episodes=2, seed=1000)
    planners = {weight: WeightedPlanner(ModelPredictiveControl(params),
                                        RewardWeights(unmet_eur_per_kwh=weight)) for weight in (0.0, 2.0)}
    result = run_policies(planners, params, episode)
    unmet = result.per_episode["unmet_kwh"].unstack("policy")
    assert (unmet[2.0] <= unmet[0.0] + 1e-6).all()
    assert unmet[2.0].sum() < unmet[0.0].sum() - 1.0  # measured: 28.6 against 45.6 kWh
    terms = result.per_episode[["profit_eur", "unmet_kwh", "degradation_kwh"]]  # scored with the site's
    assert np.allclose(result.per_episode["reward_eur"], terms["profit_eur"] - 0.5 * terms["unmet_kwh"]
                       - 0.02 * terms["degradation_kwh"])


def test_trained_weights_read_the_training_reward(tmp_path):
    from agents.checkpoints import CONFIG_FILE

    run = tmp_path / "run"
    (run / "checkpoints" / "step_000000000100").mkdir(parents=True)
    (run / "checkpoints" / "step_000000000100" / CONFIG_FILE).write_text(
        '{"site": {"preset": "caltech", "overrides": {"reward": {"demand_charge_eur_per_kw": 0.3}}}, '
        '"env": {"reward": {"unmet_eur_per_kwh": 2.0}, "overrides": {}}}')
    weights = trained_weights(run / "policy")
    assert (weights.unmet_eur_per_kwh, weights.demand_charge_eur_per_kw) == (2.0, 0.3)
    with pytest.raises(ParetoError, match="no checkpoints"):
        trained_weights(tmp_path / "empty")


def test_a_tiny_sweep_writes_the_table_and_the_plot(tmp_path):
    from omegaconf import OmegaConf

    from agents.train import train

    run = tmp_path / "runs" / "unmet_2"
    train(OmegaConf.to_container(compose_config("train", *TINY_TRAINING, "+env.reward.unmet_eur_per_kwh=2.0"),
                                 resolve=True), run)
    dropped = ("round_robin", "equal_share", "least_laxity_first", "price_threshold", "v2g_arbitrage",
               "as_late_as_possible")
    cfg = compose_config("pareto", *TINY_SITE, "num_episodes=2", "grid.unmet_eur_per_kwh=[0,2]",
                         *(f"~policies.{name}" for name in dropped),
                         f"trained=[{run}]", f"output_dir={tmp_path / 'out'}", "bootstrap.resamples=50")
    table = run_pareto(cfg)
    assert list(table.index) == ["uncontrolled", "earliest_deadline_first", "price_aware", "mpc unmet=0",
                                 "mpc unmet=2", "unmet_2", "offline_optimal"]
    assert table["kind"].tolist() == ["baseline"] * 3 + ["mpc"] * 2 + ["trained", "optimum"]
    assert table["unmet_eur_per_kwh"].tolist()[3:] == [0.0, 2.0, 2.0, 0.5]
    assert table["on_front"].any() and not table.loc["offline_optimal", "on_front"]
    assert table.loc["offline_optimal", "score"] == pytest.approx(1.0)
    assert table.loc["uncontrolled", "score"] == pytest.approx(0.0)
    on_disk = pd.read_csv(tmp_path / "out" / "pareto.csv", index_col=0)
    assert list(on_disk.index) == list(table.index)
    assert on_disk["on_front"].tolist() == table["on_front"].tolist()
    assert "| mpc unmet=2 | mpc | 2 |" in (tmp_path / "out" / "pareto.md").read_text()
    assert (tmp_path / "out" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(tmp_path / "out" / "kpis.csv")) == 2 * len(table)


def test_the_config_composes_with_a_second_weight():
    cfg = compose_config("pareto", "+grid.demand_charge_eur_per_kw=[0,0.5]")
    assert len(weight_grid(dict(cfg.grid))) == 2 * len(cfg.grid.unmet_eur_per_kwh)
    assert cfg.planner._target_ == "agents.mpc.ModelPredictiveControl" and "uncontrolled" in cfg.policies


def test_experiment_pareto_clones_a_teacher_planning_with_the_training_reward():
    from hydra.utils import instantiate

    cfg = compose_config("train", "experiment=pareto", "env.reward.unmet_eur_per_kwh=2.0")
    params = load_site("caltech")
    teacher = instantiate(cfg.imitation.teacher, _partial_=True)(params=params)
    assert isinstance(teacher, WeightedPlanner) and type(teacher.planner).__name__ == "OfflineOptimal"
    assert teacher.weights == RewardWeights(unmet_eur_per_kwh=2.0)
    assert teacher.planner.params.reward == teacher.weights and params.reward.unmet_eur_per_kwh == 0.5
