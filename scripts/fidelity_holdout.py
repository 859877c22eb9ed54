"""Out-of-sample fidelity of the fitted presets: fit on one period, test on a later one; prints tables."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.data.holdout import format_tables, holdout_fidelity


@hydra.main(config_path="../configs", config_name="fidelity_holdout", version_base="1.3")
def main(cfg: DictConfig) -> None:
    results = holdout_fidelity(OmegaConf.to_container(cfg, resolve=True))
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    print(format_tables(results))


if __name__ == "__main__":
    main()
