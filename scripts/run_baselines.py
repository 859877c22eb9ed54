"""Run every baseline (and the optimum, with policies=with_optimum) on seeded episodes of a site;
print the KPI table and write it as CSV, Markdown and JSON lines. The same function as
scripts/evaluate.py, with one row per policy in kpis.* (configs/run_baselines.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.evaluate import run_from_config


@hydra.main(config_path="../configs", config_name="run_baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_config(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
