"""The evaluation: a ratio-of-sums score with bootstrap intervals and a materiality threshold, solver and
policy failures that never abort a run, the tables and plots, and scripts/evaluate.py end to end."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import highspy
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_site
from hydra import compose, initialize_config_dir

import agents
from agents import kpis
from agents.baselines import EarliestDeadlineFirst, EqualShare, Uncontrolled
from agents.evaluate import evaluate, run_from_config, run_policies
from agents.mpc import RETRY_OPTIONS, ModelPredictiveControl
from agents.optimal import OfflineOptimal as RealOptimum
from agents.optimal import OptimizationError
from agents.report import print_report
from envs import generator_for
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]
DAYTIME = {"horizon_steps": 16, "start_hour": 7}


def table_of(rewards: dict[str, list[float]], **columns) -> pd.DataFrame:
    """A per-episode table with the given rewards per policy, every other KPI 0."""
    frames = {}
    for name, values in rewards.items():
        frame = pd.DataFrame(0.0, index=range(len(values)), columns=list(kpis.EPISODE_COLUMNS))
        frame["reward_eur"] = values
        for column, by_policy in columns.items():
            frame[column] = by_policy[name]
        frames[name] = frame
    return pd.concat(frames, names=["policy", "episode"])


def test_score_is_a_ratio_of_sums_and_skips_episodes_without_room():
    table = table_of({"unc": [0.0, 10.0, 0.0], "opt": [10.0, 10.05, 4.0], "mine": [5.0, 9.0, 4.0]})
    kpis.add_score(table, "unc", "opt", min_gap=1.0)
    # gaps 10, 0.05 and 4: the middle episode has no room to improve, so no ratio of its own
    np.testing.assert_allclose(table.loc["mine", "score"], [0.5, np.nan, 1.0])
    np.testing.assert_array_equal(table.loc["mine", "no_room_to_improve"], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(table.loc["mine", "optimum_gap_eur"], [10.0, 0.05, 4.0])
    points = kpis.summarize(table)
    assert points.loc["mine", "score"] == pytest.approx((5.0 - 1.0 + 4.0) / (10.0 + 0.05 + 4.0))
    assert points.loc["unc", "score"] == 0.0 and points.loc["opt", "score"] == pytest.approx(1.0)
    summary = kpis.summary(table)
    counts = ["scored_episodes", "no_room_to_improve", "optimum_failed"]
    assert summary.loc["mine", counts].tolist() == [3, 1, 0]


def test_no_score_without_an_episode_with_room_to_improve():
    table = table_of({"unc": [0.0, 1.0], "opt": [0.01, 1.02], "mine": [-5.0, 3.0]})
    kpis.add_score(table, "unc", "opt", min_gap=0.5)
    assert table["score"].isna().all()
    summary = kpis.summary(table)
    assert summary["score"].isna().all() and (summary["no_room_to_improve"] == 2).all()
    kpis.add_score(table, "unc", "opt", min_gap=0.0)
    assert kpis.summarize(table).loc["mine", "score"] == pytest.approx((-5.0 + 2.0) / 0.03)


def test_min_gap_is_per_port_and_day():
    params = tiny_site()  # one port, 8 steps of 15 minutes
    assert kpis.min_gap_eur(params, 0.6) == pytest.approx(0.6 * 1 * 2.0 / 24.0)
    assert kpis.min_gap_eur(load_site("caltech")) == pytest.approx(kpis.MIN_GAP_EUR_PER_PORT_DAY * 54)
    with pytest.raises(ValueError, match="min_gap_eur_per_port_day"):
        kpis.min_gap_eur(params, -1.0)


def test_bootstrap_is_seeded_and_its_interval_holds_the_point():
    rng = np.random.default_rng(4)
    unc = rng.normal(0.0, 5.0, 30)
    rewards = {"unc": unc, "opt": unc + rng.uniform(5.0, 15.0, 30), "mine": unc + rng.uniform(0.0, 8.0, 30)}
    table = table_of(rewards,
                     unmet_kwh={name: rng.uniform(0, 10, 30) for name in ("unc", "opt", "mine")},
                     energy_requested_kwh={name: np.full(30, 50.0) for name in ("unc", "opt", "mine")})
    kpis.add_score(table, "unc", "opt", min_gap=0.1)
    first, again = kpis.summary(table, seed=3), kpis.summary(table, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(kpis.summary(table, seed=4)["score_low"], first["score_low"])
    for column in ("score", "reward_eur", "unmet_pct", "unmet_kwh"):
        low, point, high = (first[f"{column}_low"], first[column], first[f"{column}_high"])
        assert (low <= point + 1e-12).all() and (point <= high + 1e-12).all(), column
    assert first.loc["mine", "score_high"] - first.loc["mine", "score_low"] > 0.05
    narrow = kpis.summary(table, seed=3, level=0.5)
    assert narrow.loc["mine", "score_high"] - narrow.loc["mine", "score_low"] < (
        first.loc["mine", "score_high"] - first.loc["mine", "score_low"])


class OfflineOptimal(RealOptimum):
    """The real optimum, failing like HiGHS on one given episode (found by this class name)."""

    def __init__(self, params, bad_requested_kwh):
        super().__init__(params)
        self.bad = bad_requested_kwh

    def begin(self, params, episode):
        if np.isclose(episode.ev_requested_kwh.sum(axis=1), self.bad).any():
            raise OptimizationError("HiGHS ended with status 'Unknown'")
        super().begin(params, episode)


def test_an_optimum_failure_leaves_its_episode_out_of_the_score(capsys):
    params = load_site("caltech", **DAYTIME)
    episode = generator_for(params).sample(params, np.random.default_rng(1), 4)
    bad = episode.ev_requested_kwh[2].sum()
    policies = {"unc": Uncontrolled(params), "edf": EarliestDeadlineFirst(params),
                "opt": OfflineOptimal(params, bad)}
    with pytest.warns(RuntimeWarning, match="policy 'opt' failed on episode 2: OptimizationError"):
        per_episode = evaluate(policies, params, episodes=episode, per_episode=True,
                               min_gap_eur_per_port_day=0.0)
    assert per_episode.loc["opt", "failed"].tolist() == [0, 0, 1, 0]
    assert per_episode.loc["opt"].loc[2, ["reward_eur", "unmet_kwh"]].isna().all()
    assert per_episode.loc["edf"].loc[[0, 1, 3], "score"].notna().all()
    assert np.isnan(per_episode.loc[("edf", 2), "score"])
    assert np.isfinite(per_episode.loc[("edf", 2), "reward_eur"])
    reward = per_episode["reward_eur"].unstack("policy").drop(index=2)
    summary = kpis.summary(per_episode)
    assert summary.loc["edf", "score"] == pytest.approx(
        (reward["edf"] - reward["unc"]).sum() / (reward["opt"] - reward["unc"]).sum())
    assert summary.loc["edf", ["episodes", "scored_episodes", "optimum_failed"]].tolist() == [4, 3, 1]
    assert summary.loc["opt", ["episodes", "failed_episodes"]].tolist() == [3, 1]
    assert np.isfinite(summary.loc["opt", "reward_eur"])
    result = run_policies(policies, params, episode, min_gap_eur_per_port_day=0.0)
    print_report(result, result.summary(), "4 episodes")
    printed = capsys.readouterr().out
    assert "over 3 episodes" in printed and "1 left out (the optimum failed on them)" in printed
    assert "FAILED: policy 'opt' failed on episode 2: OptimizationError" in printed


class Flaky(EarliestDeadlineFirst):
    """EDF that raises mid-rollout on any batch holding a given episode."""

    def __init__(self, params, bad_requested_kwh):
        super().__init__(params)
        self.bad, self.batch_bad = bad_requested_kwh, False

    def begin(self, params, episode):
        self.batch_bad = bool(np.isclose(episode.ev_requested_kwh.sum(axis=1), self.bad).any())

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        if self.batch_bad:
            raise FloatingPointError("diverged")
        return super().predict(observation, state, episode_start, deterministic)


def test_a_policy_failing_on_one_episode_keeps_the_others():
    params = load_site("caltech", **DAYTIME)
    episode = generator_for(params).sample(params, np.random.default_rng(1), 4)
    flaky = Flaky(params, episode.ev_requested_kwh[1].sum())
    policies = {"flaky": flaky, "edf": EarliestDeadlineFirst(params)}
    result = run_policies(policies, params, episode, num_envs=2)
    assert result.failures == [result.failures[0]] and "'flaky' failed on episode 1: FloatingPointError" in (
        result.failures[0])
    flaky, edf = result.per_episode.loc["flaky"], result.per_episode.loc["edf"]
    assert flaky["failed"].tolist() == [0, 1, 0, 0]
    columns = ["reward_eur", "unmet_kwh", "energy_delivered_kwh"]
    pd.testing.assert_frame_equal(flaky.drop(index=1)[columns], edf.drop(index=1)[columns])
    table = result.table()
    assert table.loc["flaky", "reward_eur"] == pytest.approx(edf.drop(index=1)["reward_eur"].mean())


def always_unknown(self):
    return highspy.HighsModelStatus.kUnknown


def unknown_on_the_first_try(original):
    def status(self):
        strategy = self.getOptionValue("simplex_strategy")
        strategy = strategy[-1] if isinstance(strategy, tuple) else strategy
        return highspy.HighsModelStatus.kUnknown if strategy == 4 else original(self)
    return status


@pytest.fixture(scope="module")
def small_day():
    params = load_site("caltech", horizon_steps=8, start_hour=8)
    return params, generator_for(params).sample(params, np.random.default_rng(2), 2)


def test_mpc_falls_back_to_its_baseline_when_highs_fails(small_day, monkeypatch):
    params, episode = small_day
    monkeypatch.setattr(highspy.Highs, "getModelStatus", always_unknown)
    mpc = ModelPredictiveControl(params, horizon_steps=4)
    policies = {"mpc": mpc, "edf": EarliestDeadlineFirst(params)}
    per_episode = evaluate(policies, params, episodes=episode, per_episode=True)
    assert (mpc.solver_fallbacks > 0).all()
    np.testing.assert_array_equal(per_episode.loc["mpc", "solver_fallbacks"], mpc.solver_fallbacks)
    np.testing.assert_array_equal(mpc.solver_retries, mpc.solver_fallbacks * len(RETRY_OPTIONS))
    columns = ["reward_eur", "energy_delivered_kwh", "unmet_kwh", "peak_import_kw"]
    np.testing.assert_allclose(per_episode.loc["mpc", columns], per_episode.loc["edf", columns], rtol=1e-6)
    assert per_episode.loc["mpc", "failed"].eq(0).all()
    realized = per_episode.loc["mpc", "peak_import_kw"].to_numpy()
    assert (mpc.peak_import_kw > 0).all() and (mpc.peak_import_kw <= realized + 1e-3).all()  # read back


def test_mpc_retries_with_other_solver_options_before_falling_back(small_day, monkeypatch):
    params, episode = small_day
    plain = evaluate({"mpc": ModelPredictiveControl(params, horizon_steps=4)}, params, episodes=episode)
    status = unknown_on_the_first_try(highspy.Highs.getModelStatus)
    monkeypatch.setattr(highspy.Highs, "getModelStatus", status)
    mpc = ModelPredictiveControl(params, horizon_steps=4)
    retried = evaluate({"mpc": mpc}, params, episodes=episode)
    assert mpc.solver_retries.sum() > 0 and mpc.solver_fallbacks.sum() == 0
    assert retried.loc["mpc", "solver_fallbacks"] == 0
    assert retried.loc["mpc", "reward_eur"] == pytest.approx(plain.loc["mpc", "reward_eur"], rel=1e-4)


def test_a_warm_start_that_runs_too_long_is_solved_again_from_scratch(small_day, monkeypatch):
    params, episode = small_day
    plain = evaluate({"mpc": ModelPredictiveControl(params, horizon_steps=4)}, params, episodes=episode)
    run = highspy.Highs.run

    def stalled_when_limited(highs):  # a warm start stalls: HiGHS stops at its time limit
        limit = highs.getOptionValue("time_limit")
        if (limit[-1] if isinstance(limit, tuple) else limit) == 2.0:
            highs.setOptionValue("time_limit", 0.0)
        return run(highs)

    monkeypatch.setattr(highspy.Highs, "run", stalled_when_limited)
    mpc = ModelPredictiveControl(params, horizon_steps=4, warm_start_limit_s=2.0)
    retried = evaluate({"mpc": mpc}, params, episodes=episode)
    assert mpc.solver_retries.sum() > 0 and mpc.solver_fallbacks.sum() == 0
    assert retried.loc["mpc", "reward_eur"] == pytest.approx(plain.loc["mpc", "reward_eur"], rel=1e-4)


def test_mpc_fallback_is_declared_and_follows_the_site():
    params = load_site("caltech")
    assert isinstance(ModelPredictiveControl(params).fallback, EarliestDeadlineFirst)
    mpc = ModelPredictiveControl(params, fallback=EqualShare)
    other = load_site("jpl", horizon_steps=4)
    mpc.begin(other, generator_for(other).sample(other, np.random.default_rng(0), 1))
    assert isinstance(mpc.fallback, EqualShare) and mpc.fallback.params is other
    given = Uncontrolled(params)
    assert ModelPredictiveControl(params, fallback=given).fallback is given


def test_kpi_glossary_names_every_column_in_the_module_and_readme():
    readme = (ROOT / "README.md").read_text()
    for column in kpis.KPI_COLUMNS + kpis.SCORE_COLUMNS:
        assert f"``{column}``" in inspect.getdoc(kpis), column
        assert f"`{column}`" in readme, column


def compose_config(*overrides, name="evaluate"):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


class StandIn(EarliestDeadlineFirst):
    """A trained agent as agents.load_policy returns it: predict(obs) and begin(params, episode)."""

    def __init__(self, params, path=None):
        super().__init__(params)
        self.path, self.begun = path, 0

    def begin(self, params, episode):
        self.begun += 1


def test_run_from_config_writes_every_table_and_plot(tmp_path, capsys, monkeypatch):
    cfg = compose_config("policies=baselines", "num_episodes=3", "+site.overrides.horizon_steps=8",
                         "+site.overrides.start_hour=8", "~policies.round_robin", "~policies.price_threshold",
                         "~policies.least_laxity_first", "~policies.as_late_as_possible",
                         f"trained=[{tmp_path}/runs/a,{tmp_path}/runs/b/policy]",
                         f"output_dir={tmp_path}/out")
    params = load_site("caltech", horizon_steps=8, start_hour=8)
    monkeypatch.setattr(agents, "load_policy", lambda path: StandIn(params, path), raising=False)
    extra = StandIn(params)
    result = run_from_config(cfg, policies={"given": extra})
    names = ["uncontrolled", "earliest_deadline_first", "equal_share", "price_aware", "v2g_arbitrage",
             "a", "b", "given"]
    assert list(result.table().index) == names and extra.begun == 1
    out = tmp_path / "out"
    rows = pd.read_csv(out / "kpis.csv")
    pairs = list(zip(rows["policy"], rows["episode"], strict=True))
    assert pairs == [(name, e) for name in names for e in range(3)]
    assert "score" not in rows and "optimum_gap_eur" not in rows  # no optimum: no score, not NaN
    summary = pd.read_csv(out / "summary.csv", index_col="policy")
    assert list(summary.index) == names and "score" not in summary
    assert {"reward_eur_low", "reward_eur_high", "unmet_pct_high", "episodes"} <= set(summary.columns)
    assert (summary["episodes"] == 3).all()
    lines = [json.loads(line) for line in (out / "kpis.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(names) and lines[0]["policy"] == "uncontrolled"
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("| KPI | uncontrolled |") and "| episodes |" in markdown
    assert {path.name for path in (out / "plots").iterdir()} == {f"day_{name}.png" for name in names}
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower() and "score" not in printed


def run_script(tmp_path, *overrides, flags=()):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), *flags, "num_episodes=3",
         "+site.overrides.horizon_steps=8", "+site.overrides.start_hour=8", "bootstrap.resamples=200",
         *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def test_evaluate_script_scores_every_policy(tmp_path):
    out = tmp_path / "out"
    result = run_script(tmp_path, f"output_dir={out}", f"hydra.run.dir={tmp_path}/run", "plots.episode=1")
    names = list(compose_config().policies)
    summary = pd.read_csv(out / "summary.csv", index_col="policy")
    assert list(summary.index) == names
    assert summary.loc["uncontrolled", "score"] == 0.0
    assert summary.loc["offline_optimal", "score"] == pytest.approx(1.0)
    assert (summary["score_low"] <= summary["score"] + 1e-9).all()
    assert (summary["scored_episodes"] + summary["optimum_failed"] == 3).all()
    assert len(pd.read_csv(out / "kpis.csv")) == 3 * len(names)
    assert (out / "plots" / "score.png").stat().st_size > 0
    assert (out / "plots" / "day_model_predictive_control.png").exists()
    assert "score = (sum R - sum R_unc) / (sum R_opt - sum R_unc)" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_evaluate_script_sweeps_sites_one_directory_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_script(tmp_path, "site=caltech,v2g_workplace", "policies=baselines", "plots=null",
               f"hydra.sweep.dir={sweep}", flags=["-m"])
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [path.name for path in jobs] == ["0_caltech", "1_v2g_workplace"]
    for job in jobs:
        assert len(pd.read_csv(job / "summary.csv")) == len(compose_config("policies=baselines").policies)
