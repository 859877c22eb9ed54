"""Scheduler runtime: loads an exported artifact and decides per-port setpoints from live site states.

Imports numpy, onnxruntime and ``envs`` only (no torch, stable-baselines3, Hydra or pickle), so a
production scheduler installs it with ``pip install -e '.[scheduler]'``.
"""

from agents.scheduler.artifact import FORMAT_VERSION, ArtifactError, read_manifest, site_hash
from agents.scheduler.live import PluggedSession, SiteState, SiteStateError
from agents.scheduler.runtime import Decision, Scheduler

__all__ = ["FORMAT_VERSION", "ArtifactError", "Decision", "PluggedSession", "Scheduler", "SiteState",
           "SiteStateError", "read_manifest", "site_hash"]
