"""Export a trained policy (or a baseline alone) for a production scheduler: policy.onnx and manifest.json
in `out` (see configs/export_policy.yaml)."""

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.export import export_from_config


@hydra.main(config_path="../configs", config_name="export_policy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    manifest = export_from_config(OmegaConf.to_container(cfg, resolve=True))
    policy = manifest["policy"]
    what = f"policy.onnx (sha256 {policy['sha256'][:12]}...)" if policy else manifest["fallback"]["class"]
    print(f"exported {what} for site {manifest['site']['name']!r} ({manifest['site']['num_ports']} ports, "
          f"hash {manifest['site']['hash'][:12]}...) to {cfg.out}")


if __name__ == "__main__":
    main()
