"""Matplotlib figures of an episode; imported only by users and callbacks, never by the core."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.site import SiteParams
from envs.state import State


@dataclasses.dataclass
class EpisodeTrace:
    """What one env of a batch did over an episode, recorded step by step for plotting.

    The figure draws the site import against the grid limit and the (up to three) tightest
    limits of the nodes below it, the prices, and the SoC on every port.

    ``record(state, info)`` after ``reset`` (with ``info=None``) and after every ``step``;
    ``env`` picks the env of the batch.

    >>> import numpy as np
    >>> from envs import core, load_site, generator_for
    >>> params = load_site("caltech", horizon_steps=8)
    >>> state = core.reset(params, generator_for(params).sample(params, np.random.default_rng(0), 2))
    >>> trace = EpisodeTrace(params, env=1)
    >>> trace.record(state)
    >>> while state.t < params.horizon_steps:
    ...     state, terms, info = core.step(params, state, np.ones((2, params.num_ports)))
    ...     trace.record(state, info)
    >>> figure = trace.figure()
    >>> [axis.get_ylabel() for axis in figure.axes]
    ['kW', 'EUR/kWh', 'port', 'SoC of the plugged EV']
    """

    params: SiteParams
    env: int = 0
    site_power_kw: list = dataclasses.field(default_factory=list)
    soc: list = dataclasses.field(default_factory=list)
    occupied: list = dataclasses.field(default_factory=list)
    episode: object = None

    def record(self, state: State, info: dict | None = None) -> None:
        self.episode = state.episode
        if info is not None:
            self.site_power_kw.append(float(info["site_power_kw"][self.env]))
        self.soc.append(state.soc[self.env].copy())
        self.occupied.append(state.port_ev[self.env] >= 0)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        params, env, episode = self.params, self.env, self.episode
        steps = len(self.site_power_kw)
        hours = params.start_minute / 60 + params.dt_hours * np.arange(steps)
        fig, (power, price, soc) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                                gridspec_kw={"height_ratios": [2, 1, 2]})
        inflexible = (episode.node_load_kw[env, :steps] - episode.node_pv_kw[env, :steps]).sum(axis=1)
        power.step(hours, self.site_power_kw, where="post", label="site import")
        power.step(hours, inflexible, where="post", label="inflexible load - PV")
        power.axhline(params.node_import_limit_kw[0], color="red", linestyle="--", label="grid limit")
        below = np.argsort(params.node_import_limit_kw[1:])[:3] + 1
        for node, style in zip(below, (":", "-.", (0, (1, 3))), strict=False):
            if params.node_import_limit_kw[node] < params.node_import_limit_kw[0]:
                power.axhline(params.node_import_limit_kw[node], color="darkred", linestyle=style,
                              label=f"{params.node_names[node]} limit")
        power.set_ylabel("kW")
        power.legend(loc="upper left")
        price.step(hours, episode.price_buy_eur_kwh[env, :steps], where="post", label="buy")
        price.step(hours, episode.price_sell_eur_kwh[env, :steps], where="post", label="sell")
        price.set_ylabel("EUR/kWh")
        price.legend(loc="upper left")
        levels = np.where(np.array(self.occupied[:steps]), np.array(self.soc[:steps]), np.nan)
        image = soc.imshow(levels.T, aspect="auto", origin="lower", vmin=0, vmax=1, interpolation="nearest",
                           extent=(hours[0], hours[-1] + params.dt_hours, -0.5, params.num_ports - 0.5))
        soc.set_ylabel("port")
        soc.set_xlabel("hour")
        fig.colorbar(image, ax=soc, label="SoC of the plugged EV")
        fig.suptitle(f"site {params.name!r}, env {env}")
        return fig
