"""Trained policies on disk: a ``policy/`` folder of weights and a plain config, loaded without pickle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

POLICY_DIR = "policy"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "policy.json"
NORMALIZATION_FILE = "obs_normalization.npz"
FORMAT_VERSION = 1
_CLASS_PREFIXES = ("torch.nn.", "agents.", "stable_baselines3.", "sb3_contrib.")


class PolicyFileError(ValueError):
    """A policy folder that is missing, incomplete or names something it may not load; names the file."""


class TrainedPolicy:
    """A trained SB3 policy behind the baselines' predictor protocol.

    ``predict(obs, deterministic=True)`` takes one flat observation (D,) or a batch (B, D) as
    ``envs.observation.observe`` builds it and returns ``(actions, None)``, actions float32 in
    [-1, 1], so ``agents.evaluate`` and every tool that runs baselines runs it too. The
    observation is scaled with the frozen statistics saved with the policy (SB3's
    ``VecNormalize``), if any; a policy trained behind the deadline guard
    (``agents.guards``) acts behind it too, and one trained on a ``departure_level`` reads each
    site's departures through that ``agents.departure_view.DepartureView`` (built in ``begin``
    from the acting site's own sessions). A recurrent policy keeps its hidden state between calls;
    ``begin(params, episode)`` (called by ``agents.evaluate.rollout`` before each batch)
    resets it, checks that the site reads actions as in training (``action_mode``, where
    ``signed`` and ``unit`` agree on one-way sites; a config without one was trained on
    ``signed``) and that its observation has the size the policy was
    trained on, and rebinds a site-aware policy (one with ``set_site``) to the new site's layout.

    ``config`` is the plain mapping saved beside the weights (see ``save_policy``).
    """

    def __init__(self, policy, config: Mapping[str, Any], obs_mean: np.ndarray | None = None,
                 obs_var: np.ndarray | None = None, clip_obs: float = 10.0, epsilon: float = 1e-8):
        self.policy = policy
        self.config = dict(config)
        self.obs_mean, self.obs_var = obs_mean, obs_var
        self.clip_obs, self.epsilon = float(clip_obs), float(epsilon)
        self._hidden = None
        self._episode_start: np.ndarray | None = None
        self._off_below_zero = False
        self.guard = None
        self.view = None

    @property
    def recurrent(self) -> bool:
        return hasattr(self.policy, "lstm_actor")

    def begin(self, params, episode) -> None:
        self._hidden, self._episode_start = None, None
        trained_mode = self.config.get("action_mode", "signed")
        if not self._reads_actions_alike(params):
            raise PolicyFileError(
                f"policy trained on site {self.config.get('site_name')!r} with action_mode {trained_mode!r} "
                f"cannot act on site {params.name!r} with action_mode {params.action_mode!r}: its actions "
                "would mean something else there")
        self._off_below_zero = trained_mode == "signed" and params.action_mode == "unit"
        from agents.guards import DeadlineGuard

        self.guard = DeadlineGuard.from_config(params, self.config, "policy")
        if self.config.get("departure_level") is not None:
            from agents.departure_view import DepartureView

            self.view = DepartureView(params, self.config["departure_level"])
        set_site = getattr(self.policy, "set_site", None)
        if callable(set_site):
            set_site(params)
            return
        from envs.observation import layout_size

        expected = int(self.config["observation_size"])
        if layout_size(params) != expected or params.num_ports != int(self.config["num_ports"]):
            raise PolicyFileError(
                f"policy trained on site {self.config['site_name']!r} ({self.config['num_ports']} ports, "
                f"observation of {expected}) cannot act on site {params.name!r} ({params.num_ports} ports, "
                f"observation of {layout_size(params)}); only site-aware policies transfer")

    def _reads_actions_alike(self, params) -> bool:
        """Whether ``params`` reads this policy's actions as its training site did. Besides the same
        ``action_mode``: ``unit`` actions from a one-way training site are charge fractions, as
        ``signed`` ones in [0, 1] are on any site; ``signed`` actions on a one-way ``unit`` site
        mean the same once a negative one (off there) is read as 0."""
        trained, acting = self.config.get("action_mode", "signed"), params.action_mode
        if trained == acting:
            return True
        if {trained, acting} != {"signed", "unit"}:
            return False
        if trained == "unit":
            return self.config.get("site_bidirectional") is False
        return not params.bidirectional

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if self.obs_mean is None:
            return obs
        scaled = (obs - self.obs_mean) / np.sqrt(self.obs_var + self.epsilon)
        return np.clip(scaled, -self.clip_obs, self.clip_obs).astype(np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.asarray(observation, dtype=np.float32)
        batch = np.atleast_2d(obs)
        if self.config.get("departure_level") is not None:
            if self.view is None:
                raise PolicyFileError("this policy reads a quantile of the real departure: call "
                                      "begin(params, episode) with the site before predict")
            batch = self.view.apply(batch)
        scaled = self.normalize(batch)
        if self.recurrent:
            if self._episode_start is None or len(self._episode_start) != len(batch):
                self._hidden, starts = None, np.ones(len(batch), dtype=bool)
            else:
                starts = np.zeros(len(batch), dtype=bool)
            actions, self._hidden = self.policy.predict(scaled, self._hidden, starts,
                                                        deterministic=deterministic)
            self._episode_start = starts
        else:
            actions, _ = self.policy.predict(scaled, deterministic=deterministic)
        actions = np.clip(np.asarray(actions, dtype=np.float32), 0.0 if self._off_below_zero else -1.0, 1.0)
        if self.config.get("deadline_guard_hours") is not None:
            if self.guard is None:
                raise PolicyFileError("this policy acts behind the deadline guard: call "
                                      "begin(params, episode) with the site before predict")
            actions = self.guard.apply(batch, actions)
        return (actions[0] if obs.ndim == 1 else actions), None


def save_policy(directory: str | Path, policy, config: Mapping[str, Any],
                obs_rms=None, clip_obs: float = 10.0, epsilon: float = 1e-8) -> Path:
    """Write ``weights.pt`` (the policy's tensors), ``policy.json`` and the observation statistics.

    ``config`` is JSON-able: ``algorithm`` (class path), ``policy`` (SB3 alias or class path),
    ``policy_kwargs`` (plain values; classes as ``{"_target_": "hydra.utils.get_class", "path": ...}``),
    ``site`` (preset and overrides), ``site_name``, ``num_ports``, ``observation_size``,
    ``action_mode`` (how the training site read actions) and ``site_bidirectional`` (whether any
    of its ports could discharge). Returns the folder.
    """
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(policy.state_dict(), directory / WEIGHTS_FILE)
    body = {"format_version": FORMAT_VERSION, **config, "clip_obs": float(clip_obs),
            "epsilon": float(epsilon), "normalized_obs": obs_rms is not None}
    (directory / CONFIG_FILE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    if obs_rms is not None:
        np.savez(directory / NORMALIZATION_FILE, mean=obs_rms.mean, var=obs_rms.var, count=obs_rms.count)
    return directory


def policy_folder(path: str | Path) -> Path:
    """The ``policy/`` folder of a run directory, or ``path`` itself when it is one."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / POLICY_DIR / CONFIG_FILE).is_file():
        return path / POLICY_DIR
    raise PolicyFileError(f"{path} is neither a run directory with {POLICY_DIR}/{CONFIG_FILE} nor a policy "
                          f"folder with {CONFIG_FILE}")


def load_policy(path: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The trained policy of a run directory or a ``policy/`` folder, as a ``TrainedPolicy``.

    Tensors are read with ``torch.load(weights_only=True)`` and the config is JSON, so loading
    runs no code from the files; classes named in the config must live in torch.nn, agents,
    stable_baselines3 or sb3_contrib.
    """
    import torch

    folder = policy_folder(path)
    config = _read_config(folder / CONFIG_FILE)
    policy = build_policy(config, device)
    try:
        weights = torch.load(folder / WEIGHTS_FILE, map_location=device, weights_only=True)
    except FileNotFoundError as error:
        raise PolicyFileError(f"{folder / WEIGHTS_FILE} is missing") from error
    except Exception as error:  # noqa: BLE001 - torch raises several types for a corrupt file
        raise PolicyFileError(f"{folder / WEIGHTS_FILE} is not a readable weights file: {error}") from error
    try:
        policy.load_state_dict(weights)
    except RuntimeError as error:
        raise PolicyFileError(f"{folder / WEIGHTS_FILE} does not fit the network of {folder / CONFIG_FILE}: "
                              f"{str(error)[:300]}") from error
    policy.set_training_mode(False)
    mean = var = None
    if config.get("normalized_obs"):
        stats = np.load(folder / NORMALIZATION_FILE, allow_pickle=False)
        mean, var = stats["mean"], stats["var"]
    return TrainedPolicy(policy, config, mean, var, config.get("clip_obs", 10.0), config.get("epsilon", 1e-8))


def build_policy(config: Mapping[str, Any], device: str = "cpu"):
    """A fresh SB3 policy object of the architecture ``config`` describes (see ``save_policy``)."""
    import gymnasium
    import torch

    from envs.action_layer import mode_bounds, mode_width
    from envs.site import load_site

    algorithm = _allowed_class(config["algorithm"], "algorithm")
    policy = config["policy"]
    if isinstance(policy, str) and policy in algorithm.policy_aliases:
        policy_class = algorithm.policy_aliases[policy]
    elif isinstance(policy, str):
        policy_class = _allowed_class(policy, "policy")
    else:
        policy_class = resolve_classes(policy)
    kwargs = resolve_classes(config.get("policy_kwargs") or {})
    size, ports = int(config["observation_size"]), int(config["num_ports"])
    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float32)
    mode = config.get("action_mode", "signed")
    action_space = gymnasium.spaces.Box(*mode_bounds(mode), (mode_width(mode, ports),), np.float32)
    if getattr(policy_class, "needs_site", False):
        site = config["site"]
        kwargs["site"] = load_site(site["preset"], **(site.get("overrides") or {}))
    policy = policy_class(observation_space, action_space, lambda _: 0.0, **kwargs)
    return policy.to(torch.device(device))


def resolve_classes(value):
    """``value`` with every ``{"_target_": "hydra.utils.get_class", "path": P}`` replaced by class P."""
    if isinstance(value, Mapping):
        if value.get("_target_") == "hydra.utils.get_class":
            return _allowed_class(value["path"], "policy_kwargs")
        if "_target_" in value:
            raise PolicyFileError(f"policy_kwargs may name classes only (hydra.utils.get_class), got "
                                  f"{str(value['_target_'])[:100]!r}")
        return {key: resolve_classes(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve_classes(item) for item in value]
    return value


def _allowed_class(path: str, field: str):
    from hydra.utils import get_class

    if not isinstance(path, str) or not path.startswith(_CLASS_PREFIXES):
        raise PolicyFileError(f"{field} names {str(path)[:100]!r}; allowed are classes under "
                              f"{', '.join(_CLASS_PREFIXES)}")
    return get_class(path)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PolicyFileError(f"{path} is not a readable policy config: {str(error)[:200]}") from error
    required = ("algorithm", "policy", "site", "num_ports", "observation_size")
    missing = [key for key in required if key not in config]
    if missing:
        raise PolicyFileError(f"{path} lacks {', '.join(missing)}")
    if config.get("format_version") != FORMAT_VERSION:
        raise PolicyFileError(f"{path} has format_version {config.get('format_version')!r}; "
                              f"this version reads {FORMAT_VERSION}")
    return config
