"""Every Hydra config composes, every policy target instantiates, and both scripts run end to end."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agents.kpis import KPI_COLUMNS
from envs.site import builtin_sites, load_site

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SITE_OPTIONS = sorted(path.stem for path in (CONFIGS / "site").glob("*.yaml"))
POLICY_OPTIONS = sorted(path.stem for path in (CONFIGS / "policies").glob("*.yaml"))
PRIMARY = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
EVALUATING = ("config", "run_baselines", "evaluate")  # the primary configs with a site option and policies


def compose_config(*overrides, name="config"):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def importable(target: str) -> bool:
    """Whether a ``_target_`` resolves; agents.optimal comes with its own issue."""
    module, name = target.rsplit(".", 1)
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def test_every_builtin_site_has_a_site_option():
    assert SITE_OPTIONS == builtin_sites()


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes(name):
    assert compose_config(name=name)
    assert set(EVALUATING) <= set(PRIMARY)


@pytest.mark.parametrize("name", EVALUATING)
@pytest.mark.parametrize("site", SITE_OPTIONS)
def test_config_composes_and_policies_instantiate(name, site):
    cfg = compose_config(f"site={site}", name=name)
    assert cfg.site.preset == site
    assert cfg.num_episodes >= 1 and cfg.policies
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    for policy_name, spec in cfg.policies.items():
        policy = instantiate(spec, _partial_=True)(params=params)
        assert callable(getattr(policy, "predict", None)), policy_name
        assert policy.params is params


@pytest.mark.parametrize("option", POLICY_OPTIONS)
def test_every_policies_option_composes(option):
    cfg = compose_config(f"policies={option}", name="run_baselines")
    baselines = compose_config("policies=baselines", name="run_baselines").policies
    assert set(baselines) <= set(cfg.policies)
    params = load_site("caltech")
    for spec in cfg.policies.values():
        if importable(spec._target_):
            assert instantiate(spec, _partial_=True)(params=params).params is params


def test_with_optimum_adds_the_offline_optimum():
    cfg = compose_config("policies=with_optimum", name="run_baselines")
    assert cfg.policies.offline_optimal._target_ == "agents.optimal.OfflineOptimal"


def test_site_overrides_reach_the_params():
    cfg = compose_config("site=v2g_workplace", "+site.overrides.horizon_steps=8",
                         "+site.overrides.scenario.sessions_per_day=3")
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    assert params.horizon_steps == 8
    assert params.scenario["sessions_per_day"] == 3
    assert params.scenario["v2g_consent_share"] == 0.7


def run_script(script, tmp_path, *overrides):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "num_episodes=1",
         "+site.overrides.horizon_steps=8", f"hydra.run.dir={run_dir}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "outputs").exists()
    return result, run_dir


def test_simulate_script_runs_end_to_end(tmp_path):
    result, run_dir = run_script("simulate.py", tmp_path)
    table = pd.read_csv(run_dir / "kpis.csv", index_col="policy")
    assert list(table.index) == list(compose_config().policies)
    for name in table.index:
        assert name in result.stdout


def test_run_baselines_script_writes_every_table(tmp_path):
    out = tmp_path / "tables"
    result, _ = run_script("run_baselines.py", tmp_path, "site=v2g_workplace",
                           "+site.overrides.start_hour=8", f"output_dir={out}")
    names = list(compose_config(name="run_baselines").policies)
    table = pd.read_csv(out / "kpis.csv", index_col="policy")
    assert list(table.index) == names and list(table.columns) == list(KPI_COLUMNS)
    assert table["energy_delivered_kwh"].max() > 0
    rows = [json.loads(line) for line in (out / "kpis.jsonl").read_text().splitlines()]
    assert [row["policy"] for row in rows] == names
    markdown = (out / "kpis.md").read_text().splitlines()
    assert markdown[0] == "| KPI | " + " | ".join(names) + " |"
    assert len(markdown) == 2 + len(KPI_COLUMNS)
    for name in names:
        assert name in result.stdout
