"""Training checkpoints: every tensor, optimizer and statistic needed to resume, written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
NORMALIZATION_FILE = "normalization.npz"
_NAME = re.compile(r"^step_(\d{12})$")
_TEMPORARY_PREFIX = ".writing-"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from; names the folder or file."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint folder ``<run>/checkpoints/step_<timesteps>``.

    It holds ``model.pt`` (the state dicts SB3 lists in ``_get_torch_save_params``: policy and
    optimizers, plus its torch variables such as SAC's entropy coefficient, and torch's RNG
    state), ``normalization.npz`` (VecNormalize statistics, when used), ``config.json`` (the
    resolved run config) and ``state.json`` (``num_timesteps`` and the counters of the run).
    A folder is written under a temporary name and renamed when complete, so a kill at any
    moment leaves the previous checkpoint whole; a folder that exists is complete.
    """

    path: Path
    timesteps: int

    def config(self) -> dict:
        return _read_json(self.path / CONFIG_FILE)

    def state(self) -> dict:
        return _read_json(self.path / STATE_FILE)


def save_checkpoint(directory: str | Path, model, config: dict, state: dict, keep: int = 2) -> Checkpoint:
    """Write a checkpoint of ``model`` at its ``num_timesteps`` and keep the ``keep`` newest."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    timesteps = int(model.num_timesteps)
    final = directory / f"step_{timesteps:012d}"
    temporary = directory / f"{_TEMPORARY_PREFIX}{timesteps:012d}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    names, variables = model._get_torch_save_params()
    tensors = {"state_dicts": {name: _attribute(model, name).state_dict() for name in names},
               "variables": {name: _attribute(model, name) for name in variables},
               "torch_rng": torch.get_rng_state()}
    torch.save(tensors, temporary / MODEL_FILE)
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        np.savez(temporary / NORMALIZATION_FILE, **_normalization_arrays(normalizer))
    body = {**state, "num_timesteps": timesteps, "n_updates": int(getattr(model, "_n_updates", 0)),
            "episode_num": int(model._episode_num)}
    _write_json(temporary / STATE_FILE, body)
    _write_json(temporary / CONFIG_FILE, config)
    _fsync_folder(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_folder(directory)
    for old in list_checkpoints(directory)[:-max(1, keep)]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, timesteps)


def list_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under ``directory``, oldest first; half-written folders are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append(Checkpoint(path, int(match.group(1))))
    return sorted(found, key=lambda checkpoint: checkpoint.timesteps)


def latest_checkpoint(directory: str | Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def remove_partial(directory: str | Path) -> int:
    """Delete folders a killed run left half-written; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    partial = [path for path in directory.iterdir() if path.name.startswith(_TEMPORARY_PREFIX)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return len(partial)


def restore_checkpoint(checkpoint: Checkpoint, model) -> dict:
    """Load ``checkpoint`` into a freshly built ``model`` of the same config; returns its state."""
    import torch

    try:
        tensors = torch.load(checkpoint.path / MODEL_FILE, map_location=model.device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for a bad file
        raise CheckpointError(f"{checkpoint.path / MODEL_FILE} cannot be read: {str(error)[:200]}") from error
    for name, state_dict in tensors["state_dicts"].items():
        _attribute(model, name).load_state_dict(state_dict)
    for name, value in tensors["variables"].items():
        with torch.no_grad():
            _attribute(model, name).copy_(value)
    torch.set_rng_state(tensors["torch_rng"])
    normalizer = model.get_vec_normalize_env()
    path = checkpoint.path / NORMALIZATION_FILE
    if normalizer is not None:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing but the run normalizes observations")
        _load_normalization(normalizer, np.load(path, allow_pickle=False))
    state = checkpoint.state()
    model.num_timesteps = int(state["num_timesteps"])
    model._episode_num = int(state["episode_num"])
    if hasattr(model, "_n_updates"):
        model._n_updates = int(state["n_updates"])
    return state


def _statistics(normalizer) -> tuple:
    return ("obs", normalizer.norm_obs, "obs_rms"), ("ret", normalizer.norm_reward, "ret_rms")


def _normalization_arrays(normalizer) -> dict[str, np.ndarray]:
    arrays = {}
    for prefix, enabled, stats in _statistics(normalizer):
        if enabled:
            rms = getattr(normalizer, stats)
            arrays.update({f"{prefix}_mean": rms.mean, f"{prefix}_var": rms.var,
                           f"{prefix}_count": np.float64(rms.count)})
    return arrays


def _load_normalization(normalizer, arrays) -> None:
    for prefix, enabled, stats in _statistics(normalizer):
        if enabled:
            rms = getattr(normalizer, stats)
            rms.mean, rms.var = arrays[f"{prefix}_mean"].copy(), arrays[f"{prefix}_var"].copy()
            rms.count = float(arrays[f"{prefix}_count"])


def _attribute(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _write_json(path: Path, body: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(body, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} cannot be read: {str(error)[:200]}") from error


def _fsync_folder(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else ():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
