"""Train an agent on a site and write its run directory; returns the validation score (for sweepers)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.train import train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = train(OmegaConf.to_container(cfg, resolve=True), HydraConfig.get().runtime.output_dir)
    return metrics["score"]


if __name__ == "__main__":
    main()
