"""Fitted site presets: the writer behind ``scripts/fit_scenario.py``, session files and fleet mixes.

``fit_site_preset`` fits a scenario to session files (``envs.data.sessions.read_sessions``) or to the ElaadNL
statistics, writes it as a site preset (YAML) with its fidelity figures (JSON);
``fleet_from_ev_specs`` turns EV specs into a ``fleet`` list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.data.fit import PARAMETRIC_EV_FIELDS
from envs.data.fitting import _rounded, calibrate_capped_energy, fidelity, fit_sessions
from envs.data.sessions import read_sessions
from envs.site import SiteError

_PRODUCED = ("arrivals_weekday", "arrivals_weekend", "day_of_week_factors", "dwell_quantiles_hours",
             "dwell_quantiles_hours_weekend", "energy_quantiles_kwh", "energy_quantiles_kwh_weekend",
             "dwell_energy_copula_weekend", "departure_error_quantiles_hours_weekend")
_GENERATED = "# fit_scenario: "


def fleet_from_ev_specs(specs: Mapping[str, Mapping[str, Any]], decimals: int = 3) -> list[dict[str, float]]:
    """Fleet mix from EV specs keyed by model name (EV2Gym's ev_specs JSON layout): models with the
    same battery and limits are merged and shares follow the registration counts."""
    merged: dict[tuple, float] = {}
    for spec in specs.values():
        key = (float(spec["battery_capacity"]), float(spec["max_ac_charge_power"]),
               float(spec.get("max_ac_discharge_power", 0.0)), float(spec.get("max_dc_charge_power", 0.0)),
               float(spec.get("max_dc_discharge_power", 0.0)))
        merged[key] = merged.get(key, 0.0) + float(spec.get("number_of_registrations", 1.0))
    total = sum(merged.values())
    return [{"battery_kwh": b, "max_charge_kw": ac, "max_discharge_kw": ac_out, "max_dc_charge_kw": dc,
             "max_dc_discharge_kw": dc_out, "share": round(count / total, decimals)}
            for (b, ac, ac_out, dc, dc_out), count in sorted(merged.items(), key=lambda item: -item[1])]


def fit_site_preset(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fit a site preset as ``configs/fit_scenario.yaml`` describes, write it (YAML) and its fidelity
    figures (JSON), and return the figures.

    The site block is ``site_from``'s (a preset name or a YAML path) with ``site`` replacing
    top-level fields; the scenario keeps ``site_from``'s fields that no fit produces (with
    ``keep_scenario``: hand-written ones such as ``fleet``, ``loads`` or ``cap_request_to_stay``),
    then ``scenario``, then the fitted fields (``default_fleet`` when no fleet is given); fields
    that ``site_from`` and the fit share keep ``site_from``'s place, so that refitting a preset in
    place moves nothing the fit leaves unchanged; of the weekend tables, only the fitted ones are
    kept (an ElaadNL fit keeps ``site_from``'s weekday copula and announced-departure error table,
    which it does not fit, but not their weekend variants). Sessions come from ``sessions.path``
    (a file, a list, or for ``format: elaad`` the ElaadNL folder). With ``cap_request_to_stay``
    the energy tables are calibrated to the site (``calibrate_capped_energy``) so that the capped
    requests keep the fitted quantiles; the figures are those of the calibrated scenario.
    """
    import json
    from pathlib import Path

    from envs.generators import generator_for
    from envs.site import load_site

    source, options = dict(cfg["sessions"]), dict(cfg.get("fit") or {})
    days, seed = int(cfg.get("fidelity_days", 2800)), int(cfg.get("seed", 0))
    path = source["path"]
    names = [Path(p).name for p in ([path] if isinstance(path, str) else path)]
    sessions = None
    if source["format"] == "elaad":
        from envs.data.elaad import elaad_fidelity, elaad_scenario, read_elaad

        stats = read_elaad(path, source["kind"])
        volume = source["sessions_per_weekday"]
        fitted = elaad_scenario(stats, volume, weekend_ratio=source.get("weekend_ratio"),
                                block_minutes=options.get("block_minutes", 30),
                                num_quantiles=options.get("num_quantiles", 41))
        described = [f"scenario from the ElaadNL statistics ({Path(path).name}/, {source['kind']} charging) "
                     f"at {volume:g} sessions per weekday"]

        def evaluate(generator, params):
            return elaad_fidelity(stats, generator, params, days, seed)
    else:
        sessions = read_sessions(path, source["format"], **(source.get("reader") or {}))
        window = {"start": source.get("start"), "end": source.get("end")}
        fitted = fit_sessions(sessions, **options, **window)
        described = [f"scenario fitted to {', '.join(names)}"]

        def evaluate(generator, params):
            return fidelity(sessions, generator, params, days, tz=options.get("tz"), seed=seed,
                            energy_column=options.get("energy_column", "requested_kwh"), **window)

    header, spec = _site_source(cfg.get("site_from"))
    carried = dict(spec.pop("scenario", None) or {}) if cfg.get("keep_scenario", True) else {}
    carried.pop("generator", None)
    for key in (*PARAMETRIC_EV_FIELDS, *_PRODUCED):
        if key not in fitted:
            carried.pop(key, None)
    output = Path(cfg["output"])
    spec = {"name": output.stem, **{k: v for k, v in spec.items() if k != "name"}, **(cfg.get("site") or {})}
    scenario = {"generator": "fitted", **carried, **(cfg.get("scenario") or {}), **fitted}
    if "fleet" not in scenario and cfg.get("default_fleet"):
        scenario["fleet"] = list(cfg["default_fleet"])
    spec["scenario"] = scenario
    params = load_site(spec)
    generator = generator_for(params)
    if generator.cap_request_to_stay:
        weekday, weekend = calibrate_capped_energy(generator, params)
        scenario["energy_quantiles_kwh"] = _rounded(weekday, 4)
        if "energy_quantiles_kwh_weekend" in scenario or not np.array_equal(weekday, weekend):
            scenario["energy_quantiles_kwh_weekend"] = _rounded(weekend, 4)
        params = load_site(spec)
        generator = generator_for(params)
    figures = evaluate(generator, params)
    if sessions is not None:
        figures["data_quality"] = sessions.attrs["report"].to_dict()
    overall = figures["overall"]
    if "sessions" in figures:
        energy = options.get("energy_column", "requested_kwh")
        described.append(f"{figures['sessions']} sessions arriving {figures['first_day']} .. "
                         f"{figures['last_day']}, energy from {energy}")
    if generator.cap_request_to_stay:
        described.append("energy tables calibrated so that the requests capped to the stay keep the fitted "
                         "quantiles")
    described.append("fidelity: KS arrival {arrival_ks}, dwell {dwell_ks}, energy {energy_ks}; sessions per "
                     "day {model_sessions_per_day} vs {sessions_per_day}".format(**overall))
    comment = cfg.get("comment")
    if comment:
        header = [f"# {line}".rstrip() for line in str(comment).strip().splitlines()]
    lines = [*header, *(_GENERATED + line for line in described)]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n" + _dump_yaml(spec))
    fidelity_path = Path(cfg.get("fidelity_path") or output.with_suffix(".fidelity.json"))
    fidelity_path.parent.mkdir(parents=True, exist_ok=True)
    fidelity_path.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _site_source(site_from) -> tuple[list[str], dict[str, Any]]:
    from importlib import resources
    from pathlib import Path

    import yaml

    if site_from is None:
        return [], {}
    path = Path(str(site_from))
    if not path.exists():
        path = resources.files("envs") / "sites" / f"{site_from}.yaml"
    if not path.is_file():
        raise SiteError(f"site_from {str(site_from)!r} is neither a YAML file nor a preset")
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith(_GENERATED):
            header.append(line)
    return header, dict(yaml.safe_load(text) or {})


def _dump_yaml(spec: Mapping[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def is_scalar(value):
        return not isinstance(value, (dict, list)) or (isinstance(value, list) and all(map(is_scalar, value)))

    def mapping(dumper, data):
        flow = all(is_scalar(v) for v in data.values()) and len(data) <= 8
        return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)

    def sequence(dumper, data):
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=all(map(is_scalar, data)))

    Dumper.add_representer(dict, mapping)
    Dumper.add_representer(list, sequence)
    Dumper.add_representer(tuple, sequence)
    return yaml.dump(dict(spec), Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True)
