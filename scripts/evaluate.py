"""Evaluate baselines, MPC, the offline optimum and trained agents on the same episodes of a site; write
kpis.*, summary.* and plots/ (see configs/evaluate.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.evaluate import run_from_config


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_config(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
