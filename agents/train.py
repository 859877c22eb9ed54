"""Train an SB3 agent on a site: batched envs, the model from its config, validation, checkpoints,
resume, the final policy folder and ``metrics.json``."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.callbacks import EpisodeKpiLogger, Periodic, ProgressBar, Stopwatch, log_validation
from agents.checkpoints import latest_checkpoint, remove_partial, restore_checkpoint, save_checkpoint
from agents.kpis import KPI_COLUMNS
from agents.policy_io import POLICY_DIR, TrainedPolicy, save_policy
from envs.errors import ConfigError
from envs.limits import check_count, check_number
from envs.observation import layout_size
from envs.reward import RewardWeights
from envs.site import SiteParams, deep_update, load_site

CHECKPOINT_DIR = "checkpoints"
BEST_POLICY_DIR = "best_policy"
TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.json"


class TrainConfigError(ConfigError):
    """A training config or run directory that cannot be used; names the key or the folder."""


_COUNTS = {  # key: (size limit of envs.limits or None, lowest value)
    "n_envs": ("envs", 1), "total_timesteps": (None, 0), "eval_episodes": ("episodes", 1),
    "torch_threads": (None, 1), "seed": (None, 0), "eval_seed": (None, 0), "eval_freq": (None, 0),
    "checkpoint_freq": (None, 0), "keep_checkpoints": (None, 1), "figure_episode": (None, 0),
}


def checked_config(cfg: Mapping[str, Any]) -> dict:
    """``cfg`` with its counts (``_COUNTS``) as ints, ``init_log_std`` as a float and ``keep_best``
    a bool; a bad one is a ConfigError naming its key."""
    out = dict(cfg)
    for key, (limit, low) in _COUNTS.items():
        if key in out:
            out[key] = check_count(key, out[key], limit, low)
    if not isinstance(out.get("keep_best", False), bool):
        raise TrainConfigError(f"keep_best must be true or false, got {str(out['keep_best'])[:50]!r}")
    if out.get("init_log_std") is not None:
        if not out.get("init_policy"):
            raise TrainConfigError("init_log_std sets the log std of an init_policy; this run has none")
        out["init_log_std"] = check_number("init_log_std", out["init_log_std"])
    return out


def site_params(cfg: Mapping[str, Any]) -> SiteParams:
    """The site of a run config: ``site.preset`` with ``site.overrides`` and ``env.overrides``."""
    return load_site(cfg["site"]["preset"], **site_overrides(cfg))


def site_overrides(cfg: Mapping[str, Any]) -> dict:
    """The site fields a run changes: ``site.overrides`` with ``env.overrides`` merged over them."""
    return deep_update(dict(cfg["site"].get("overrides") or {}), cfg.get("env", {}).get("overrides") or {})


def training_params(params: SiteParams, env_cfg: Mapping[str, Any]) -> SiteParams:
    """``params`` with the training reward: the site's weights with ``env.reward`` replacing some."""
    weights = env_cfg.get("reward") or {}
    known = {field.name for field in dataclasses.fields(RewardWeights)}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise TrainConfigError(f"env.reward.{unknown[0]} is not a reward weight; "
                               f"known: {', '.join(sorted(known))}")
    changed = {name: float(value) for name, value in weights.items()}
    return params.replace(reward=dataclasses.replace(params.reward, **changed))


def build_env(cfg: Mapping[str, Any], params: SiteParams):
    """The training ``SmartChargingVecEnv`` of ``n_envs`` envs, with the training reward
    (``TrainingRewardVecEnv``), read through the departure view and behind the deadline guard and
    ``VecNormalize`` where ``env`` asks for them."""
    from envs.sb3 import SmartChargingVecEnv

    env_cfg = cfg["env"]
    num_envs = check_count("n_envs", cfg["n_envs"], "envs")
    venv = SmartChargingVecEnv(num_envs, site=training_params(params, env_cfg), step_info=False)
    scale = env_cfg.get("reward_scale")
    if env_cfg.get("controllable_reward") or scale is not None:
        from agents.training_reward import TrainingRewardVecEnv

        venv = TrainingRewardVecEnv(venv, bool(env_cfg.get("controllable_reward")),
                                    1.0 if scale is None else float(scale))
    level = env_cfg.get("departure_level")
    if level is not None:
        from agents.viewed_env import DepartureViewVecEnv

        venv = DepartureViewVecEnv(venv, params, level)
    from agents.guards import DeadlineGuard

    guard = DeadlineGuard.from_config(params, env_cfg)
    if guard is not None:
        from agents.guarded_env import GuardedVecEnv

        venv = GuardedVecEnv(venv, guard)
    if env_cfg.get("normalize_obs") or env_cfg.get("normalize_reward"):
        from stable_baselines3.common.vec_env import VecNormalize

        venv = VecNormalize(venv, norm_obs=bool(env_cfg.get("normalize_obs")),
                            norm_reward=bool(env_cfg.get("normalize_reward")),
                            clip_obs=float(env_cfg.get("clip_obs", 10.0)),
                            gamma=float(cfg["agent"].get("gamma", 0.99)))
    return venv


def build_model(agent_cfg: Mapping[str, Any], env, params: SiteParams, seed: int, device: str = "cpu"):
    """The SB3 algorithm of ``agent_cfg`` (``_target_`` and its hyperparameters) on ``env``.

    ``policy`` is an SB3 alias (``MlpPolicy``) or a ``hydra.utils.get_class`` spec of a policy
    class; a policy class with ``needs_site = True`` gets ``site=params`` in its kwargs.
    ``action_noise_std`` (off-policy algorithms such as TD3) adds Gaussian exploration noise of
    that std to every action entry, whatever the site's size.
    """
    from hydra.utils import instantiate

    from agents.policy_io import resolve_classes

    policy = resolve_classes(agent_cfg["policy"])
    kwargs = resolve_classes(dict(agent_cfg.get("policy_kwargs") or {}))
    if getattr(policy, "needs_site", False):
        kwargs["site"] = params
    rest = {key: value for key, value in agent_cfg.items()
            if key not in ("policy", "policy_kwargs", "action_noise_std")}
    noise = agent_cfg.get("action_noise_std")
    if noise is not None:
        import numpy as np
        from stable_baselines3.common.noise import NormalActionNoise

        std = check_number("agent.action_noise_std", noise, low=0.0)
        width = env.action_space.shape[0]
        rest["action_noise"] = NormalActionNoise(np.zeros(width), np.full(width, std))
    algorithm = instantiate(rest, _partial_=True, _convert_="all")
    return algorithm(policy=policy, env=env, policy_kwargs=kwargs, seed=int(seed), device=device, verbose=0)


def train(cfg: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Train per ``cfg`` (see ``configs/train.yaml``) into ``run_dir``; returns the metrics written.

    With ``resume`` true, the run continues from the newest checkpoint of ``run_dir`` with the
    config saved in it (same step counter, target and TensorBoard folder); otherwise
    ``run_dir`` must hold no checkpoint yet. With ``keep_best`` the policy of the best validation
    score so far is also kept in ``best_policy/`` (``metrics.json``: ``best_score``,
    ``best_timesteps``), across resumes.
    """
    import torch
    from stable_baselines3.common.logger import configure

    run_dir = Path(run_dir)
    checkpoints = run_dir / CHECKPOINT_DIR
    remove_partial(checkpoints)
    checkpoint = latest_checkpoint(checkpoints)
    if cfg.get("resume"):
        if checkpoint is None:
            raise TrainConfigError(f"resume=true but {checkpoints} holds no checkpoint to resume from")
        cfg = checkpoint.config()
    elif checkpoint is not None:
        raise TrainConfigError(f"{run_dir} already holds checkpoints (newest {checkpoint.path.name}); pass "
                               "resume=true to continue it or choose a new hydra.run.dir")
    cfg = checked_config(cfg)
    total = cfg["total_timesteps"]
    torch.set_num_threads(cfg["torch_threads"])
    params = site_params(cfg)
    env = build_env(cfg, params)
    model = build_model(cfg["agent"], env, params, cfg["seed"], str(cfg.get("device", "cpu")))
    formats = list(cfg.get("log_formats") or ["tensorboard"])
    if checkpoint is not None:
        _keep_earlier_csv(run_dir / TENSORBOARD_DIR, checkpoint.timesteps)
    model.set_logger(configure(str(run_dir / TENSORBOARD_DIR), formats))
    state = restore_checkpoint(checkpoint, model) if checkpoint is not None else {}
    resumed_from = state.get("num_timesteps")
    clock = Stopwatch(state.get("wall_s", 0.0))

    from agents.validation import Validation

    validation = Validation(params, cfg["eval_episodes"], cfg["eval_seed"])
    latest: dict[str, Any] = {"score": state.get("score"), "best_score": state.get("best_score"),
                              "best_timesteps": state.get("best_timesteps")}

    def evaluate(current) -> tuple:
        start = time.perf_counter()
        policy = trained_policy(current, cfg, params)
        table, score = validation.score(policy)
        figure = validation.figure(policy, cfg.get("figure_episode", 0))
        log_validation(current.logger, table, score, figure, time.perf_counter() - start)
        current.logger.record("eval/timesteps", current.num_timesteps)
        current.logger.record("eval/training_s", clock.elapsed())
        current.logger.dump(current.num_timesteps)
        latest["score"] = score
        if cfg.get("keep_best") and (latest["best_score"] is None or score > latest["best_score"]):
            save_best_policy(current, cfg, params, run_dir / BEST_POLICY_DIR)
            latest["best_score"], latest["best_timesteps"] = score, int(current.num_timesteps)
        return table, score

    def checkpoint_now(current) -> None:
        save_checkpoint(checkpoints, current, cfg, {"wall_s": clock.elapsed(), "score": latest["score"],
                                                    "best_score": latest["best_score"],
                                                    "best_timesteps": latest["best_timesteps"]},
                        cfg.get("keep_checkpoints", 2))

    if checkpoint is None and cfg.get("init_policy"):
        start_from_policy(model, cfg["init_policy"], cfg.get("init_log_std"),
                          cfg["env"].get("departure_level"))
    elif checkpoint is None and cfg.get("imitation"):
        from agents.imitation import pretrain

        rewarded = training_params(params, cfg["env"])
        from agents.guards import DeadlineGuard

        scale, guard = cfg["env"].get("reward_scale"), DeadlineGuard.from_config(params, cfg["env"])
        view = None
        if cfg["env"].get("departure_level") is not None:
            from agents.departure_view import DepartureView

            view = DepartureView(params, cfg["env"]["departure_level"], "env.departure_level")
        for key, value in pretrain(model, cfg["imitation"], rewarded, rewarded.reward.coefficients(),
                                   cfg["seed"], bool(cfg["env"].get("controllable_reward")),
                                   1.0 if scale is None else float(scale), guard, view).items():
            model.logger.record(key, value)
    steps = model.num_timesteps
    eval_freq, checkpoint_freq = cfg.get("eval_freq", 0), cfg.get("checkpoint_freq", 0)
    periodic = Periodic(eval_freq, checkpoint_freq, evaluate, checkpoint_now,
                        next_eval=steps + (eval_freq if steps else 0) if eval_freq > 0 else 0,
                        next_checkpoint=steps + checkpoint_freq if checkpoint_freq > 0 else 0)
    callbacks = [EpisodeKpiLogger(params), periodic]
    if cfg.get("progress_bar", True):
        callbacks.append(ProgressBar(total, lambda: latest["score"]))
    if total > steps:
        model.learn(total_timesteps=total - steps, callback=callbacks, reset_num_timesteps=checkpoint is None)
    checkpoint_now(model)
    table, score = evaluate(model)
    policy_dir = save_trained_policy(model, cfg, params, run_dir / POLICY_DIR)
    metrics = {
        "score": score,
        "validation": {"episodes": validation.episodes.num_envs, "seed": cfg["eval_seed"],
                       "kpis": {column: float(table[column].mean()) for column in KPI_COLUMNS
                                if column not in ("score", "wall_s")}},
        "timesteps": int(model.num_timesteps),
        "target_timesteps": total,
        "wall_s": clock.elapsed(),
        "site": params.name,
        "agent": cfg["agent"]["_target_"],
        "seed": cfg["seed"],
        "policy": policy_dir.name,
    }
    if cfg.get("keep_best"):
        metrics.update(best_policy=BEST_POLICY_DIR, best_score=latest["best_score"],
                       best_timesteps=latest["best_timesteps"])
    if resumed_from is not None:
        metrics["resumed_from_timestep"] = int(resumed_from)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    env.close()
    return metrics


def trained_policy(model, cfg: Mapping[str, Any], params: SiteParams) -> TrainedPolicy:
    """The model's current policy as a ``TrainedPolicy`` with frozen observation statistics."""
    normalizer = model.get_vec_normalize_env()
    mean = var = None
    clip = float(cfg["env"].get("clip_obs", 10.0))
    if normalizer is not None and normalizer.norm_obs:
        mean, var = normalizer.obs_rms.mean.copy(), normalizer.obs_rms.var.copy()
    return TrainedPolicy(model.policy, policy_config(cfg, params), mean, var, clip)


def save_trained_policy(model, cfg: Mapping[str, Any], params: SiteParams, directory: Path) -> Path:
    normalizer = model.get_vec_normalize_env()
    obs_rms = normalizer.obs_rms if normalizer is not None and normalizer.norm_obs else None
    return save_policy(directory, model.policy, policy_config(cfg, params), obs_rms,
                       float(cfg["env"].get("clip_obs", 10.0)))


def save_best_policy(model, cfg: Mapping[str, Any], params: SiteParams, directory: Path) -> Path:
    """Replace ``directory`` with the model's policy folder, written beside it first so that a
    run killed meanwhile leaves the previous best whole."""
    import shutil

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_trained_policy(model, cfg, params, partial)
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def policy_config(cfg: Mapping[str, Any], params: SiteParams) -> dict:
    """The plain config ``agents.policy_io.build_policy`` rebuilds the policy from."""
    agent = cfg["agent"]
    return {
        "algorithm": agent["_target_"],
        "policy": agent["policy"],
        "policy_kwargs": agent.get("policy_kwargs") or {},
        "site": {"preset": cfg["site"]["preset"], "overrides": site_overrides(cfg)},
        "site_name": params.name,
        "num_ports": params.num_ports,
        "observation_size": layout_size(params),
        "action_mode": params.action_mode,
        "site_bidirectional": bool(params.bidirectional),
        "deadline_guard_hours": cfg["env"].get("deadline_guard_hours"),
        "guard_fits_headroom": bool(cfg["env"].get("guard_fits_headroom", False)),
        "peak_fill_quantile": cfg["env"].get("peak_fill_quantile"),
        "departure_level": cfg["env"].get("departure_level"),
    }


def _keep_earlier_csv(folder: Path, timesteps: int) -> None:
    """SB3's CSV output starts its file anew: keep the earlier attempt's rows under another name."""
    progress = folder / "progress.csv"
    if progress.is_file():
        progress.rename(folder / f"progress.until_{timesteps}.csv")


def start_from_policy(model, path: str | Path, log_std=None, departure_level=None) -> None:
    """Load a saved policy's weights (and observation statistics) into ``model`` before RL: a
    committed clone fine-tuned without cloning again. The networks must match, and so must what
    they read of the departures (``departure_level``, the run's ``env.departure_level``).
    ``log_std`` (a float, ``init_log_std`` as ``checked_config`` reads it) then replaces the
    actor's log standard deviation: how far RL explores around the loaded actions."""
    import torch

    from agents.policy_io import load_policy

    if log_std is not None:
        if not hasattr(model.policy, "log_std"):
            raise TrainConfigError(f"init_log_std: the policy {type(model.policy).__name__} has no log std")
    loaded = load_policy(path)
    if loaded.config.get("departure_level") != departure_level:
        raise TrainConfigError(f"init_policy={path} reads departures at departure_level "
                               f"{loaded.config.get('departure_level')}, this run at env.departure_level "
                               f"{departure_level}: set them alike")
    try:
        model.policy.load_state_dict(loaded.policy.state_dict())
    except RuntimeError as error:
        raise TrainConfigError(f"init_policy={path}: its weights do not fit this run's policy "
                               f"(agent and policy_kwargs must match): {str(error)[:300]}") from error
    if log_std is not None:
        with torch.no_grad():
            model.policy.log_std.fill_(log_std)
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None and normalizer.norm_obs and loaded.obs_mean is not None:
        normalizer.obs_rms.mean, normalizer.obs_rms.var = loaded.obs_mean.copy(), loaded.obs_var.copy()
