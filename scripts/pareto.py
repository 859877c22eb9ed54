"""Cost against unmet energy and waiting: MPC over reward weights, trained agents, baselines and the optimum
on the same episodes; writes pareto.csv, pareto.md and pareto.png (see configs/pareto.yaml)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.pareto import run_pareto


@hydra.main(config_path="../configs", config_name="pareto", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_pareto(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
