"""Fit a scenario to charging sessions and write it as a site preset with its fidelity figures."""

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.data.fit_presets import fit_site_preset


@hydra.main(config_path="../configs", config_name="fit_scenario", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(json.dumps(fit_site_preset(OmegaConf.to_container(cfg, resolve=True)), indent=2))


if __name__ == "__main__":
    main()
