"""Learning-quality benchmark: train each variant on each site with several seeds, then score every
trained policy on held-out test days beside the best rule baseline, MPC and the offline optimum.

    python scripts/bench_learning.py                                  # caltech, bc and bc_ppo, 3 seeds
    python scripts/bench_learning.py --sites caltech v2g_workplace --variants mlp_ppo perport_ppo bc bc_ppo
    python scripts/bench_learning.py --variants bc --transfer jpl     # caltech policies on jpl as they are

Runs go to ``<out>/<site>/<variant>/seed_<s>/`` (run directories of ``scripts/train.py``, whose
``policy/`` folder is small enough to commit); the table to ``<out>/<site>/results.md`` and is
printed. Scores are ratios of sums over the test days (seed 1000, never seen in training or
validation) with 95 % bootstrap intervals (``agents.kpis``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from learning_days import ROOT, ScoredSite, add_day_arguments
from omegaconf import OmegaConf

from agents.train import BEST_POLICY_DIR

M1 = ["experiment=clone_mpc_12h", "imitation.teacher.departure_margin_hours=1.0"]  # clone_mpc_12h_m1
M1_FT = [*M1, "+agent.policy_kwargs.occupied_likelihood=true", "env.controllable_reward=true"]  # its PPO
PEAK = "+agent.policy_kwargs.peak_room=true"
ARRIVALS = "imitation.teacher.future_arrivals=true"  # a teacher that knows the EVs arriving in its window
FILL = "env.peak_fill_quantile=0.5"  # the guard fills up to the peak so far at or below the median price
UNIT = "+site.overrides.action_mode=unit"  # trains on [0, 1] = off .. full; scored on the site as it is
PORT_VALUES = "+agent.policy_kwargs.port_values=true"  # Q critics also sum a term per occupied port
DAYS_2K = "imitation.episodes=2048"  # four times the demonstration days of clone_mpc_12h
VARIANTS = {  # overrides, and whether the variant runs RL (then --timesteps sets its length)
    "mlp_ppo": (["agent=ppo"], True),
    "perport_ppo": (["agent=ppo_perport", "env=physical"], True),
    "perport_sac": (["agent=sac_perport", "env=physical"], True),
    "perport_sac_guard": (["agent=sac_perport", "env=physical", "env.deadline_guard_hours=1.0"], True),
    "perport_sac_unit": (["agent=sac_perport", "env=physical", UNIT], True),
    "perport_td3_unit": (["agent=td3_perport", "env=physical", UNIT], True),
    "perport_tqc_unit": (["agent=tqc_perport", "env=physical", UNIT], True),
    "perport_sac_unit_pv": (["agent=sac_perport", "env=physical", UNIT, PORT_VALUES], True),
    "perport_td3_unit_pv": (["agent=td3_perport", "env=physical", UNIT, PORT_VALUES], True),
    "perport_a2c": (["agent=a2c_perport", "env=physical"], True),
    "perport_a2c_5m": (["agent=a2c_perport", "env=physical", "keep_best=true"], True),  # --timesteps 5000000
    "perport_recurrent_ppo": (["agent=recurrent_ppo_perport", "env=physical"], True),
    "bc": (["experiment=caltech_perport_bc", "total_timesteps=0"], False),
    "bc_ppo": (["experiment=caltech_perport_bc"], True),
    "clone_mpc": (["experiment=clone_mpc"], False),
    "clone_mpc_ppo": (["experiment=clone_mpc"], True),
    "clone_mpc_1h": (["experiment=clone_mpc", "env.deadline_guard_hours=1.0"], False),
    "clone_mpc_ft": (["experiment=clone_mpc", "env.deadline_guard_hours=1.0",
                      "+agent.policy_kwargs.occupied_likelihood=true"], True),
    "clone_mpc_long": (["experiment=clone_mpc", "env.deadline_guard_hours=1.0", "imitation.episodes=512",
                        "imitation.dagger_rounds=4", "imitation.dagger_episodes=128"], False),
    "clone_mpc_attention": (["experiment=clone_mpc", "env.deadline_guard_hours=1.0",
                             "+agent.policy_kwargs.attention_heads=2"], False),
    "clone_mpc_site": (["experiment=clone_mpc", "env.deadline_guard_hours=1.0",
                        "+agent.policy_kwargs.site_power=true"], False),
    "clone_mpc_12h": (["experiment=clone_mpc_12h"], False),
    "clone_mpc_12h_m1": ([*M1], False),
    "clone_mpc_12h_ft": (["experiment=clone_mpc_12h", "+agent.policy_kwargs.occupied_likelihood=true"], True),
    "clone_mpc_12h_80ep": (["experiment=clone_mpc_12h", "imitation.epochs=80"], False),
    "clone_mpc_12h_d4": (["experiment=clone_mpc_12h", "imitation.dagger_rounds=4"], False),
    "clone_mpc_12h_d4_ft": (["experiment=clone_mpc_12h", "imitation.dagger_rounds=4",
                             "+agent.policy_kwargs.occupied_likelihood=true"], True),
    "clone_mpc_12h_d4_rank": (["experiment=clone_mpc_ranked"], False),
    "clone_mpc_12h_d4_rank_dq": (["experiment=clone_mpc_ranked", "env.departure_level=0.2",
                                  "env.deadline_guard_hours=0.5"], False),
    "clone_mpc_12h_d4_rank_dq10": (["experiment=clone_mpc_ranked", "env.departure_level=0.1",
                                    "env.deadline_guard_hours=0.5"], False),
    "clone_mpc_12h_m1_tie": ([*M1, "imitation.tie_break_eur_kwh_per_step=0.001"], False),
    "clone_mpc_12h_m1_rank": ([*M1, "+agent.policy_kwargs.price_ranks=true"], False),
    "clone_mpc_12h_m1_ft": ([*M1_FT], True),
    "clone_mpc_12h_m1_ft_long": ([*M1_FT], True),
    "clone_mpc_12h_m1_ft_peak": ([*M1_FT, "+env.reward.demand_charge_eur_per_kw=0.6"], True),
    "clone_mpc_12h_m1_ft_fast": ([*M1_FT, "agent.learning_rate=2.0e-4"], True),
    "clone_mpc_12h_m1_ft_slow": ([*M1_FT, "agent.learning_rate=2.0e-5"], True),
    "clone_mpc_12h_m1_ft_slow_long": ([*M1_FT, "agent.learning_rate=2.0e-5"], True),
    "clone_mpc_12h_m1_ft_1e5": ([*M1_FT, "agent.learning_rate=1.0e-5"], True),
    "clone_mpc_12h_m1_ft_narrow": ([*M1_FT, "agent.learning_rate=2.0e-5", "init_log_std=-3.0"], True),
    "clone_mpc_12h_m1_ft_wide": ([*M1_FT, "agent.learning_rate=2.0e-5", "init_log_std=-1.5"], True),
    "clone_mpc_12h_m1_d4_rank": (["experiment=clone_mpc_ranked",
                                  "imitation.teacher.departure_margin_hours=1.0"], False),
    "clone_mpc_12h_m1_peak": ([*M1, PEAK], False),
    "clone_mpc_12h_m1_arrivals": ([*M1, ARRIVALS], False),
    "clone_mpc_12h_m1_fill": ([*M1, FILL], False),
    "clone_mpc_12h_m1_fill_ft_slow": ([*M1_FT, FILL, "agent.learning_rate=2.0e-5"], True),
    "clone_mpc_12h_m1_arrivals_fill_ft_slow": ([*M1_FT, ARRIVALS, FILL, "agent.learning_rate=2.0e-5"], True),
    "clone_mpc_12h_m1_fill_ft_slow_peak": ([*M1_FT, FILL, "agent.learning_rate=2.0e-5",
                                            "+env.reward.demand_charge_eur_per_kw=0.3"], True),
    "clone_mpc_12h_m1_peak_ft_slow": ([*M1_FT, PEAK, "agent.learning_rate=2.0e-5"], True),
    "clone_mpc_12h_m1_2k": ([*M1, DAYS_2K], False),
    "clone_mpc_12h_m1_2k_fill_ft_slow": ([*M1_FT, DAYS_2K, FILL, "agent.learning_rate=2.0e-5"], True),
}
STARTS_FROM = {  # variant: the variant whose run of the same seed (under --out) RL fine-tunes
    "clone_mpc_ft": "clone_mpc",
    "clone_mpc_12h_ft": "clone_mpc_12h",
    "clone_mpc_12h_d4_ft": "clone_mpc_12h_d4",
    **{variant: "clone_mpc_12h_m1" for variant, (overrides, _) in VARIANTS.items()
       if overrides[:len(M1_FT)] == M1_FT},  # the clone_mpc_12h_m1 fine-tunings; the entries below override
    "clone_mpc_12h_m1_peak_ft_slow": "clone_mpc_12h_m1_peak",
    "clone_mpc_12h_m1_arrivals_fill_ft_slow": "clone_mpc_12h_m1_arrivals",
    "clone_mpc_12h_m1_2k_fill_ft_slow": "clone_mpc_12h_m1_2k",
}
RULES = ("earliest_deadline_first", "price_threshold", "price_aware", "v2g_arbitrage")


def train_run(site: str, variant: str, seed: int, timesteps: int, out: Path, site_overrides=()) -> dict:
    from agents.train import train

    variant_overrides, reinforced = VARIANTS[variant]
    overrides = [f"site={site}", *site_overrides, *variant_overrides, f"seed={seed}", "progress_bar=false",
                 "checkpoint_freq=0", "keep_checkpoints=1"]
    if reinforced:
        overrides += [f"total_timesteps={timesteps}", f"eval_freq={max(timesteps // 4, 1)}"]
    if variant in STARTS_FROM:
        overrides.append(f"init_policy={out / site / STARTS_FROM[variant] / f'seed_{seed}'}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    run_dir = out / site / variant / f"seed_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = train(cfg, run_dir)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return metrics


def score_runs(site: str, runs: dict[str, Path], episodes: int, seed: int, with_mpc: bool = True,
               site_overrides=(), variants=()):
    from agents import load_policy

    scored = ScoredSite(site, site_overrides)
    planners = ["model_predictive_control", "offline_optimal"] if with_mpc else ["offline_optimal"]
    policies = {name: scored.reference(name) for name in ["uncontrolled", *RULES, *planners]}
    if with_mpc:
        policies.update(teachers(variants, site, scored.params, policies["model_predictive_control"]))
    policies.update({name: load_policy(path) for name, path in runs.items()})
    return scored.summary(policies, episodes, seed)


def teachers(variants, site: str, params, reference) -> dict:
    """The MPC teachers of ``variants`` that plan otherwise than ``reference`` (the reference MPC:
    another window or departure margin), by a name that says how (``MPC 48 steps, 1.5 h
    margin``), built for ``params``."""
    from hydra.utils import instantiate

    from agents.mpc import ModelPredictiveControl

    def plan(mpc):
        return mpc.horizon_steps, mpc.departure_margin_hours, mpc.future_arrivals

    out = {}
    for variant in variants:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"site={site}", *VARIANTS[variant][0]])
        if "teacher" not in (cfg.get("imitation") or {}):
            continue
        teacher = instantiate(cfg.imitation.teacher, _partial_=True)(params=params)
        if isinstance(teacher, ModelPredictiveControl) and plan(teacher) != plan(reference):
            knows = ", knowing the arrivals" if teacher.future_arrivals else ""
            name = f"MPC {teacher.horizon_steps} steps, {teacher.departure_margin_hours:g} h margin{knows}"
            out[name] = teacher
    return out


def table(summary, runs: dict[str, Path], metrics: dict[str, dict]) -> str:
    has_score = "score" in summary and summary["score"].notna().any()
    best_rule = max((name for name in RULES if name in summary.index),
                    key=lambda name: summary.loc[name, "score" if has_score else "reward_eur"])
    lines = ["| policy | score | unmet % | overload requested kWh | grid violation kWh | reward EUR/day "
             "| training s |", "|---|---|---:|---:|---:|---:|---:|"]
    for name in summary.index:
        if name not in runs and not name.startswith("MPC ") and name not in (
                best_rule, "model_predictive_control", "offline_optimal", "uncontrolled"):
            continue
        row = summary.loc[name]
        score = (f"{row['score']:.3f} [{row['score_low']:.3f}, {row['score_high']:.3f}]"
                 if has_score else "n/a")
        label = f"{name} (best rule)" if name == best_rule else name
        wall = f"{metrics[name]['wall_s']:.0f}" if name in metrics else ""
        lines.append(f"| {label} | {score} | {row['unmet_pct']:.2f} | {row['overload_requested_kwh']:.2f} | "
                     f"{row['grid_violation_kwh']:.2f} | {row['reward_eur']:.2f} | {wall} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", nargs="+", default=["caltech"])
    parser.add_argument("--variants", nargs="+", default=["bc", "bc_ppo"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=400_000, help="RL steps of the PPO variants")
    add_day_arguments(parser)
    parser.add_argument("--transfer", nargs="*", default=[], help="sites to run the first site's policies on")
    parser.add_argument("--unplanned", nargs="*", default=["city"],
                        help="transfer sites scored without MPC (too large to plan every step here); "
                             "the offline optimum still sets the score's scale")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "learning")
    parser.add_argument("--site-overrides", nargs="*", default=[],
                        help="Hydra overrides of the site for training and scoring alike, e.g. "
                             "+site.overrides.forecast_steps=24 (use another --out)")
    parser.add_argument("--score-only", action="store_true", help="score the runs already under --out")
    args = parser.parse_args()
    for site in args.sites:
        runs, metrics = {}, {}
        for variant in args.variants:
            for seed in args.seeds:
                name = f"{variant}_seed{seed}"
                run_dir = args.out / site / variant / f"seed_{seed}"
                if not args.score_only:
                    start = time.perf_counter()
                    train_run(site, variant, seed, args.timesteps, args.out, args.site_overrides)
                    print(f"{site} {name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
                if args.score_only and not (run_dir / "metrics.json").exists():
                    continue  # a variant not run for this seed
                best = run_dir / BEST_POLICY_DIR  # a keep_best run is scored by its best validated policy
                runs[name] = best if best.is_dir() else run_dir
                metrics[name] = json.loads((run_dir / "metrics.json").read_text())
        summary = score_runs(site, runs, args.test_episodes, args.test_seed,
                             site_overrides=args.site_overrides, variants=args.variants)
        text = table(summary, runs, metrics)
        (args.out / site).mkdir(parents=True, exist_ok=True)
        (args.out / site / "results.md").write_text(text)
        print(f"\n{site}, {args.test_episodes} test days (seed {args.test_seed}):\n{text}", flush=True)
        for other in args.transfer:
            summary = score_runs(other, runs, args.test_episodes, args.test_seed,
                                 with_mpc=other not in args.unplanned, site_overrides=args.site_overrides,
                                 variants=args.variants)
            text = table(summary, runs, {})
            (args.out / site / f"transfer_{other}.md").write_text(text)
            print(f"\n{site} policies on {other}:\n{text}", flush=True)


if __name__ == "__main__":
    main()
