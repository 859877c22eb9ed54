"""Every Hydra config composes, every policy target instantiates, and the simulate script runs."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agents.baselines import RuleBasedPolicy
from envs.site import builtin_sites, load_site

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SITE_OPTIONS = sorted(path.stem for path in (CONFIGS / "site").glob("*.yaml"))


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_every_builtin_site_has_a_site_option():
    assert SITE_OPTIONS == builtin_sites()


@pytest.mark.parametrize("site", SITE_OPTIONS)
def test_config_composes_and_policies_instantiate(site):
    cfg = compose_config(f"site={site}")
    assert cfg.site.preset == site
    assert cfg.num_episodes >= 1 and cfg.policies
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    for name, spec in cfg.policies.items():
        policy = instantiate(spec, _partial_=True)(params=params)
        assert isinstance(policy, RuleBasedPolicy), name
        assert policy.params is params


def test_site_overrides_reach_the_params():
    cfg = compose_config("site=v2g_workplace", "+site.overrides.horizon_steps=8",
                         "+site.overrides.scenario.sessions_per_day=3")
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.overrides))
    assert params.horizon_steps == 8
    assert params.scenario["sessions_per_day"] == 3
    assert params.scenario["v2g_consent_share"] == 0.7


def test_simulate_script_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "simulate.py"), "num_episodes=1",
         "+site.overrides.horizon_steps=8", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(run_dir / "kpis.csv", index_col="policy")
    assert list(table.index) == list(compose_config().policies)
    for name in table.index:
        assert name in result.stdout
    assert not (tmp_path / "outputs").exists()
