"""Latency of one scheduler decision, one thread: p50, p99 and mean ms per site as a table and one JSON line
(see configs/bench_scheduler.yaml and agents/scheduler/bench.py)."""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy is imported: one decision on one core

import json  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402


@hydra.main(config_path="../configs", config_name="bench_scheduler", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from agents.scheduler import ArtifactError
    from agents.scheduler.bench import bench_from_config, table

    try:
        summary = bench_from_config(OmegaConf.to_container(cfg, resolve=True))
    except ArtifactError as error:
        raise SystemExit(f"bench_scheduler: artifact refused: {error}") from None
    print(table(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
