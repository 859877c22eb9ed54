"""The learning benchmarks' common ground: a site as `configs/evaluate.yaml` composes it, its
reference policies, its held-out test days and a markdown row per scored policy.

Imported by ``scripts/bench_learning.py``, ``scripts/bench_guard.py`` and the analysis scripts of
``experiments/learning/`` (which put this folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 1000
TEST_EPISODES = 28


class ScoredSite:
    """The site ``site`` with ``overrides`` (Hydra overrides of the ``evaluate`` config), its
    ``params``, and ``reference(name)``: a fresh policy of ``configs/policies/with_optimum.yaml``
    (uncontrolled, the rules, MPC, the offline optimum) built for it."""

    def __init__(self, site: str, overrides: Sequence[str] = ()):
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from envs.site import load_site

        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            self.cfg = compose(config_name="evaluate", overrides=[f"site={site}", *overrides])
        self.params = load_site(self.cfg.site.preset, **OmegaConf.to_container(self.cfg.site.overrides))

    def reference(self, name: str):
        from hydra.utils import instantiate

        return instantiate(self.cfg.policies[name], _partial_=True)(params=self.params)

    def summary(self, policies: dict, episodes: int = TEST_EPISODES, seed: int = TEST_SEED):
        """``agents.evaluate.run_policies(...).summary()`` of ``policies`` on the test days."""
        from agents.evaluate import episodes_for, run_policies

        return run_policies(policies, self.params, episodes_for(self.params, None, episodes, seed)).summary()

    def print_scores(self, name: str, policies: dict, episodes: int = TEST_EPISODES,
                     seed: int = TEST_SEED) -> None:
        """Score ``policies`` on the days and print a header naming the site ``name`` and the table."""
        summary = self.summary(policies, episodes, seed)
        kind = "test days" if seed == TEST_SEED else "days"
        print(f"{name}, {episodes} {kind} (seed {seed}):")
        print(score_rows(summary, policies), flush=True)


def runs_with_config(runs: Iterable[Path], key: str, values: Iterable, describe) -> dict:
    """Each trained run (or policy folder) loaded as it is, labelled by its last two path parts,
    and once per value of ``values`` with its saved config's ``key`` replaced, labelled
    ``"<label> <describe(value)>"``."""
    from agents import load_policy

    values = list(values)
    policies = {}
    for run in runs:
        label = "/".join(Path(run).parts[-2:])
        policies[label] = load_policy(run)
        for value in values:
            policy = load_policy(run)
            policy.config[key] = value
            policies[f"{label} {describe(value)}"] = policy
    return policies


def score_acting_config(description: str, key: str, flag: str, site: str, values: Sequence[float],
                        rules: Sequence[str], describe) -> None:
    """The command line of a script that scores trained runs (``--runs``) as they are and with their
    saved config's ``key`` set to each of ``flag``'s values when they act (``runs_with_config``),
    beside uncontrolled charging, ``--policies`` (reference names, default ``rules``) and the
    offline optimum on ``--site``'s days; prints the table."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--site", default=site)
    parser.add_argument(flag, dest="values", nargs="*", type=float, default=list(values))
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--policies", nargs="*", default=list(rules))
    add_day_arguments(parser)
    args = parser.parse_args()
    scored = ScoredSite(args.site)
    policies = {name: scored.reference(name) for name in ("uncontrolled", *args.policies, "offline_optimal")}
    policies.update(runs_with_config(args.runs, key, args.values, describe))
    scored.print_scores(args.site, policies, args.test_episodes, args.test_seed)


def add_day_arguments(parser) -> None:
    """``--test-episodes`` and ``--test-seed`` on ``parser``, defaulting to the held-out test days."""
    parser.add_argument("--test-episodes", type=int, default=TEST_EPISODES)
    parser.add_argument("--test-seed", type=int, default=TEST_SEED)


def score_rows(summary, names: Iterable[str]) -> str:
    """A markdown table of score (with interval), unmet energy, overload and reward for ``names``."""
    lines = ["| policy | score | unmet % | overload requested kWh | reward EUR/day |",
             "|---|---|---:|---:|---:|"]
    for name in names:
        row = summary.loc[name]
        lines.append(f"| {name} | {row['score']:.3f} [{row['score_low']:.3f}, {row['score_high']:.3f}] | "
                     f"{row['unmet_pct']:.2f} | {row['overload_requested_kwh']:.2f} | "
                     f"{row['reward_eur']:.2f} |")
    return "\n".join(lines)
