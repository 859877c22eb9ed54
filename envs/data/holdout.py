"""Out-of-sample fidelity: a site preset refitted to one period of sessions, measured on a later one."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.fit_presets import fit_site_preset
from envs.data.fitting import fidelity, generated_sessions, ks_distance, session_arrays
from envs.data.sessions import read_sessions
from envs.generators import generator_for
from envs.site import load_site

MARGINALS = (("arrival", "minute"), ("dwell", "dwell_hours"), ("energy", "energy_kwh"),
             ("departure_error", "error_hours"))


def holdout_fidelity(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each split of ``cfg["splits"]``: fit, test and shift figures (``configs/fidelity_holdout.yaml``).

    A split names a ``preset`` (the site shape, fleet and cap, as ``fit_scenario`` refits it),
    the session ``files`` (``cfg["data_dir"]``-relative, read by ``cfg["format"]``, default
    ``acn_csv``, with ``cfg["reader"]``), and ``train`` and ``test`` date ranges
    [first, last]. The preset's session part is refitted to the train sessions with ``cfg["fit"]``
    (the options that made the presets), its energy tables calibrated to the cap; then
    ``envs.data.fitting.fidelity`` compares ``cfg["fidelity_days"]`` generated days with the
    train sessions (in sample) and with the test sessions (out of sample). ``shift`` holds the
    KS distances between the train and the test sessions themselves (unrounded: arrival minute,
    stay, energy, announced-minus-real departure), which no fit to the train period can undo;
    ``daily`` the mean sessions per weekday and weekend day of the test period and of the model,
    and the KS distance of the test days' session counts to the generated days'. ``ks_5pct`` is
    the two-sample KS distance that rejects at the 5 % level for the test sessions against the
    generated ones (1.358 sqrt((n + m) / (n m)); for the daily counts, n test days).
    """
    data_dir = Path(str(cfg.get("data_dir", "."))).expanduser()
    days, seed, fit = int(cfg.get("fidelity_days", 2800)), int(cfg.get("seed", 0)), dict(cfg["fit"])
    energy = fit.get("energy_column", "requested_kwh")
    fmt, reader = cfg.get("format", "acn_csv"), dict(cfg.get("reader") or {})
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for split in cfg["splits"]:
            files = [str(data_dir / name) for name in split["files"]]
            (train_first, train_last), (test_first, test_last) = split["train"], split["test"]
            output = Path(folder) / f"{split['name']}.yaml"
            in_sample = fit_site_preset({
                "sessions": {"path": files, "format": fmt, "reader": reader, "start": train_first,
                             "end": train_last},
                "fit": fit, "site_from": split["preset"], "keep_scenario": True, "site": {}, "scenario": {},
                "output": str(output), "fidelity_path": str(output.with_suffix(".json")),
                "fidelity_days": days, "seed": seed})
            params = load_site(output)
            generator = generator_for(params)
            sessions = read_sessions(files, fmt, **reader)
            out_of_sample = fidelity(sessions, generator, params, days, seed=seed, energy_column=energy,
                                     start=test_first, end=test_last)
            train = session_arrays(sessions, None, energy, train_first, train_last)
            test = session_arrays(sessions, None, energy, test_first, test_last)
            model = generated_sessions(generator, params, days, seed)
            results.append({
                "name": split["name"], "preset": split["preset"], "train": [train_first, train_last],
                "test": [test_first, test_last], "in_sample": in_sample, "out_of_sample": out_of_sample,
                "shift": {f"{name}_ks": ks_distance(train[key][np.isfinite(train[key])],
                                                    test[key][np.isfinite(test[key])])
                          for name, key in MARGINALS},
                "ks_5pct": _critical(out_of_sample["sessions"], int(len(model["slot"]))),
                "daily": _daily(sessions, model, test_first, test_last),
            })
    return results


def format_tables(results: Sequence[Mapping[str, Any]]) -> str:
    """The figures of ``holdout_fidelity`` as Markdown tables (KS per marginal, daily counts)."""
    lines = ["| split | sessions | KS arrival | KS dwell | KS energy | KS announced error | "
             "sessions per day data / model |", "|---|---|---|---|---|---|---|"]
    for result in results:
        for label, figures in (("fit " + " .. ".join(result["train"]), result["in_sample"]),
                               ("test " + " .. ".join(result["test"]), result["out_of_sample"])):
            overall = figures["overall"]
            rate = overall["sessions_per_day_rel_error"]
            lines.append(f"| {result['name']}: {label} | {figures['sessions']} | "
                         f"{overall['arrival_ks']:.4f} | {overall['dwell_ks']:.4f} | "
                         f"{overall['energy_ks']:.4f} | {overall['departure_error_ks']:.4f} | "
                         f"{overall['sessions_per_day']:.2f} / "
                         f"{overall['model_sessions_per_day']:.2f} ({rate:+.1%}) |")
        shift = result["shift"]
        lines.append(f"| {result['name']}: train vs test data | | {shift['arrival_ks']:.4f} | "
                     f"{shift['dwell_ks']:.4f} | {shift['energy_ks']:.4f} | "
                     f"{shift['departure_error_ks']:.4f} | |")
    lines += ["", "| split | day type | test days | sessions per day test / model | standard deviation "
              "test / model | KS daily counts | KS at 5 % |", "|---|---|---|---|---|---|---|"]
    for result in results:
        for day_type, daily in result["daily"].items():
            lines.append(f"| {result['name']} | {day_type} | {daily['days']} | {daily['test_mean']:.2f} / "
                         f"{daily['model_mean']:.2f} ({daily['model_mean'] / daily['test_mean'] - 1:+.1%}) | "
                         f"{daily['test_std']:.2f} / {daily['model_std']:.2f} | {daily['ks']:.3f} | "
                         f"{daily['ks_5pct']:.3f} |")
    lines += ["", "KS at the 5 % level, test sessions against the generated ones: " + ", ".join(
        f"{result['name']} {result['ks_5pct']:.4f}" for result in results)]
    return "\n".join(lines)


def _daily(sessions, model: Mapping[str, np.ndarray], first, last) -> dict[str, dict[str, float]]:
    import pandas as pd

    date = sessions["arrival"].dt.tz_localize(None).dt.normalize()
    calendar = pd.date_range(first, last, freq="D")
    counts = date[date.isin(calendar)].value_counts().reindex(calendar, fill_value=0)
    weekend = calendar.day_of_week >= 5
    figures = {}
    for day_type, test_days, model_days in (("weekday", ~weekend, ~model["day_weekend"]),
                                            ("weekend", weekend, model["day_weekend"])):
        observed, generated = counts.to_numpy()[test_days], model["per_day"][model_days]
        figures[day_type] = {
            "days": int(len(observed)), "test_mean": float(observed.mean()),
            "model_mean": float(generated.mean()), "test_std": float(observed.std(ddof=1)),
            "model_std": float(generated.std(ddof=1)),
            "ks": ks_distance(observed, generated), "ks_5pct": _critical(len(observed), len(generated))}
    return figures


def _critical(n: int, m: int) -> float:
    return float(1.358 * np.sqrt((n + m) / (n * m)))
