"""Serve an exported artifact from an OCPP central system to simulated charge points replaying an env episode
(see configs/serve_scheduler.yaml)."""

import asyncio
import logging
import time
import zoneinfo

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.scheduler import Scheduler
from agents.scheduler.charge_point_sim import replay_over_ocpp
from envs.generators import generator_for
from envs.site import load_site


@hydra.main(config_path="../configs", config_name="serve_scheduler", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for name in ("ocpp", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    params = load_site(cfg.site.preset, **OmegaConf.to_container(cfg.site.get("overrides") or {}))
    scheduler = Scheduler(cfg.artifact, params)
    episode = generator_for(params).sample(params, np.random.default_rng(cfg.seed), 1)
    start = time.perf_counter()
    replay = asyncio.run(replay_over_ocpp(
        scheduler, episode, version=str(cfg.ocpp_version), unit=cfg.unit, kind=cfg.profile_kind,
        charge_points=cfg.charge_points, host=cfg.host, port=cfg.port, steps=cfg.steps,
        zone=zoneinfo.ZoneInfo(cfg.timezone), response_timeout_s=cfg.response_timeout_s))
    wall_s = time.perf_counter() - start
    for step, dispatch in enumerate(replay.dispatches):
        note = dispatch.error or "; ".join(dispatch.rejected[:3]) or ""
        print(f"step {step:3d} {dispatch.now.isoformat()} {len(dispatch.calls):3d} profiles "
              f"{replay.drawn_kw[step].sum():8.1f} kW {note}")
    problems = sum(bool(d.error or d.rejected) for d in replay.dispatches)
    print(f"served {len(replay.dispatches)} steps of site {params.name!r} over OCPP {cfg.ocpp_version} at "
          f"{replay.url} in {wall_s:.1f} s: {replay.drawn_kw.sum() * params.dt_hours:.1f} kWh drawn, "
          f"{problems} steps with errors or rejected profiles")


if __name__ == "__main__":
    main()
