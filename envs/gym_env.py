"""Gymnasium shell around the batched core: one environment (a batch of 1)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs import core
from envs.actions import action_array, action_space
from envs.episode import Generator
from envs.generators import generator_for
from envs.observation import observation_bounds, observation_layout, observe
from envs.reward import TERMS
from envs.site import load_site
from envs.state import State


class SmartChargingEnv(gymnasium.Env):
    """EV smart charging (and V2G) at one site whose power nodes have transformer limits.

    ## Description

    A site is a tree of power nodes (grid connection at the root, transformers, panels,
    chargers) with ports hanging below them. Each step lasts ``dt`` minutes (``dt_minutes`` of
    the site, 15 by default) and an episode lasts ``horizon_steps`` steps (one day by default),
    starting at ``start_hour``. EVs arrive, take a free port (ports are tried in a random order
    per episode), ask for an energy amount and announce a departure time; the real departure
    differs from the announced one. When no port is free they wait in the site queue (at most
    ``queue.capacity`` EVs, for at most ``queue.patience_minutes``, and never past their
    departure); an arrival that finds the queue full is turned away. Ports may fail for a while
    (outages from the scenario): an EV on a failing port goes back to the queue. With
    ``stay_timing: exact`` an EV arriving or leaving within a step is there for only that part
    of it (``Episode.ev_first_step_fraction`` and ``ev_last_step_fraction``, filled by the
    replay): its port's available power is scaled to those minutes; queued EVs plug in at step
    boundaries. By default (``rounded``) every step of a stay counts whole. Everything
    the agent does not control (arrivals, prices, inflexible loads, PV, outages) is drawn once
    at ``reset`` by the generator; the step itself is deterministic.

    ## Action Space

    Set by the site's ``action_mode`` (``envs.action_layer``):

    * ``signed`` (default): ``Box(-1, 1, (num_ports,), float32)``, described below.
    * ``unit``: ``Box(0, 1, (num_ports,), float32)``. On a one-way site entry ``i`` is the
      fraction of port ``i``'s available charge power (0 off, 1 full); on a bidirectional site
      it reads as the signed fraction ``2 a - 1`` (0 full discharge, 0.5 idle, 1 full charge).
    * ``priority``: ``Box(-1, 1, (2 * num_ports,), float32)``, port-major: entries ``2 i`` and
      ``2 i + 1`` are port ``i``'s signed fraction and its priority. A safety layer grants the
      requested powers in priority order (higher first, equal priorities sharing in proportion
      to their requests): discharging fills each node's export room, then charging each node's
      import headroom, so every node stays within its limits whenever its inflexible load and PV
      alone do, no headroom a port asked for is left idle, and ``overload_requested_kwh`` is 0.

    In ``signed`` mode, entry ``i`` is the fraction of port ``i``'s available
    charge power (``> 0``) or available discharge power (``< 0``) to use for this step. The
    available charge power (grid side, a step average) is what the car takes at full power over
    the step: the lower of the port limit and the car's limit, which tapers linearly from full
    at ``battery.taper_knee_soc`` down to ``battery.taper_floor`` of it at a full battery,
    integrated exactly over the step as the SoC rises; at most the room left in the battery and
    the energy still requested. The
    available discharge power is nonzero only for V2G: a bidirectional port, a car that can
    discharge and a driver who consented; it never takes the battery below the EV's minimum
    SoC. Empty or failed ports have no available power, so their entries do nothing. Values
    outside the mode's bounds are clipped (counted in ``info["action_clipped"]``); NaN or
    infinite values raise ``ValueError`` naming the env and port, a wrong shape one naming the expected shape.
    The caller's action array is never modified.

    The requested port powers are then made feasible through the node tree (each node's net
    flow is the inflexible load minus PV below it plus the ports below it): every port keeps
    its direction and at most its request; where a node's flow breaks its import limit, the
    charging ports below it give way (the discharging ones for its export limit), all ports on
    one node by one common factor, and subtrees in proportion to what they can give, so that
    every node ends within its limits whenever some such schedule exists, and with the least
    summed excess otherwise (``envs.projection``). The battery receives ``charge_efficiency``
    of the grid-side charge energy and gives ``1 / discharge_efficiency`` of the discharged
    energy.

    ## Observation Space

    A flat ``float32`` vector in physical units (kW, kWh, hours, EUR/kWh); ``env.layout`` maps
    each name to its slice. Per port: ``occupied``, ``available`` (0 during an outage), ``soc``,
    ``remaining_kwh``, ``hours_to_departure`` (announced, negative once overdue),
    ``max_charge_kw``, ``max_discharge_kw`` (the available powers above) and ``v2g_allowed``.
    Per node: ``node_headroom_kw`` (import limit minus inflexible load plus PV). Then
    ``time_of_day`` (sin, cos), a one-hot ``weekday``, ``setpoint_kw``, ``queue_length``, and a
    window of ``forecast_steps + 1`` values (now and ahead) of the buy and sell prices, carbon
    intensity, site load and site PV. Sites with ``demand_forecast: true`` add the expected
    arrivals and requested kWh of each of the next ``forecast_steps`` steps; then
    ``peak_import_kw`` (the highest site import so far). Sites whose ``observability`` is not
    ``full`` show estimates where the site cannot know the SoC, request or departure, and end
    with per-port flags marking them (``envs.observability``). Bounds are in
    ``observation_space``; normalize with a wrapper (e.g. ``VecNormalize``).

    ## Rewards

    ``reward = charging_revenue + export_revenue - energy_cost - weighted penalties`` in EUR,
    with the weights of the site's ``reward`` block. Every term of the step is in ``info`` by
    name, in physical units: ``energy_cost_eur`` (site import at the buy price),
    ``charging_revenue_eur`` (net energy into batteries at the drivers' tariff; V2G discharge
    is refunded at the tariff),
    ``export_revenue_eur`` (site export at the sell price), ``degradation_kwh`` (battery
    throughput), ``unmet_kwh`` (requested energy missing when an EV departs,
    or when an EV an outage pushed off its port gives up waiting),
    ``unmet_at_horizon_kwh`` (requested energy missing at the end of the horizon for EVs still
    plugged in then; weight ``unmet_at_horizon_eur_per_kwh``, 0 by default),
    ``overload_requested_kwh`` (energy the agent asked for beyond the node limits, i.e. removed
    by the projection above), ``grid_violation_kwh`` (energy still beyond a node limit after
    it, summed over nodes: what no action could avoid, e.g. inflexible load or PV alone
    exceeding a limit),
    ``peak_increase_kw`` (rise of the episode's peak site import, for demand charges),
    ``carbon_kg`` and ``setpoint_error_kwh`` (distance to the requested site import). ``info``
    also holds the diagnostics ``site_power_kw``, ``charged_kwh``, ``discharged_kwh``,
    ``turned_away``, ``abandoned``, ``wait_hours`` and ``action_clipped``.

    ## Episode End

    The episode never terminates (``terminated`` is always False); it is truncated after
    ``horizon_steps`` steps, the same for every episode. The final step's ``info`` also holds
    ``episode_totals``: every reward term summed over the episode. Stepping again before
    ``reset`` raises ``RuntimeError``.

    ## Arguments

    * ``site``: a preset name (``"caltech"``, ``"v2g_workplace"``, ``"city"``), a YAML path, a
      mapping or a ``SiteParams``.
    * ``generator``: anything with ``sample(params, rng, num_envs) -> Episode``; default: the
      parametric generator of the site's ``scenario`` block.
    * ``**overrides``: site fields to replace, e.g. ``horizon_steps=32`` or ``dt_minutes=5``.

    ``reset(seed=s)`` seeds ``np.random.default_rng(s)``, from which every later episode is drawn.

    >>> import gymnasium as gym
    >>> import envs
    >>> env = gym.make("SmartCharging-v0", site="caltech", horizon_steps=4)
    >>> env.action_space
    Box(-1.0, 1.0, (54,), float32)
    >>> obs, info = env.reset(seed=0)
    >>> obs[env.unwrapped.layout["occupied"]].shape
    (54,)
    >>> for _ in range(4):
    ...     obs, reward, terminated, truncated, info = env.step(np.ones(54, dtype=np.float32))
    >>> terminated, truncated
    (False, True)
    >>> sorted(info["episode_totals"]) == sorted(envs.TERMS)
    True
    """

    metadata = {"render_modes": []}

    def __init__(self, site: Any = "caltech", generator: Generator | None = None, **overrides):
        self.params = load_site(site, **overrides)
        self.generator = generator_for(self.params) if generator is None else generator
        self.layout = observation_layout(self.params)
        low, high = observation_bounds(self.params)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = action_space(self.params)
        self.state: State | None = None
        self._coefficients = self.params.reward.coefficients()
        self._action_shape = self.action_space.shape
        self._per_port = ("two values per port (power, priority)" if self.params.action_mode == "priority"
                          else "one value per port")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode = self.generator.sample(self.params, self.np_random, 1)
        self.state = core.reset(self.params, episode)
        return observe(self.params, self.state)[0], {}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset before step")
        action = action_array(action, self._action_shape,
                              f": {self._per_port} of site {self.params.name!r} (env 0)")
        self.state, terms, diagnostics = core.step(self.params, self.state, action[None])
        row = terms[0]
        info = dict(zip(TERMS, row.tolist(), strict=True))
        for key, value in diagnostics.items():
            info[key] = value[0].item()
        truncated = self.state.t >= self.params.horizon_steps
        if truncated:
            info["episode_totals"] = dict(zip(TERMS, self.state.totals[0].tolist(), strict=True))
        reward = float(row @ self._coefficients)
        return observe(self.params, self.state)[0], reward, False, truncated, info
