"""Per-port actor-critic for Stable-Baselines3: one small network shared by every port (torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from envs.action_layer import action_bounds, action_width
from envs.observation import PEAK_FIELD, declared_layout, observation_bounds, observation_scale
from envs.site import SiteParams

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}
POOLINGS = ("mean", "max")
NODE_CONTEXT = 2  # per port: tightest headroom / node limit, tightest headroom / wanted kW below
PRICE_CONTEXT = 3  # per port, with price_ranks: cheaper share, slack of cheaper steps, window cover
LOAD_CONTEXT = 2  # per port, with load_ranks: share of higher site load ahead, highest load ahead over now
PEAK_CONTEXT = 3  # per port, with peak_room: room below the peak so far over grid limit, charge, discharge


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class PortAttention(nn.Module):
    """Multi-head self-attention over a site's ports (B, P, E), skipping the ``ignored`` (B, P)
    keys; plain matrix products and a softmax, so that it exports to ONNX."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} must be a multiple of attention_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, ports: torch.Tensor, ignored: torch.Tensor) -> torch.Tensor:
        b, p, e = ports.shape
        q, k, v = self.qkv(ports).view(b, p, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / float(np.sqrt(e // self.heads))
        scores = scores.masked_fill(ignored[:, None, None, :], -1e9)
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(b, p, e))


class PerPortNetwork(nn.Module):
    """Scores every port with one shared MLP; pools the ports into a site summary and a value.

    Each occupied port is embedded from its scaled ``PORT_FIELDS`` and a node context (over the
    nodes from its own up to the root, the least headroom relative to the node's limit and to
    the power the ports below it could take now). The pooled embeddings (mean and/or max over
    occupied ports, and the occupied share) with the scaled site-wide fields give a site
    context; each occupied port's action mean comes from its embedding plus that context,
    through ``head_layers`` hidden layers (an empty port's is 0: the env ignores it), and the
    value (B, 1) from the pooled embeddings and site-wide fields. Only occupied ports are
    computed, so the cost follows the EVs plugged in.

    With ``site_power`` a site head also sets the EVs' net power for the whole site: from the
    site context, a fraction ``s`` in (-1, 1) of the occupied ports' summed charge power (or,
    below 0, of their summed discharge power). The ports' charging requests are then scaled
    by one common factor, each capped at its port's power, so that charging less the
    discharging the ports asked for meets that total where the caps allow: the ports share
    out a total that one head decides, instead of adding up independent errors (a demand
    charge pays for the site's peak, not the ports').

    With ``price_ranks`` each port also reads where the buy price now ranks among the forecast
    steps before its announced departure: the share of those steps that are cheaper than now,
    how many more of them there are than the steps its remaining energy needs at full power
    (over the forecast length, clipped to [-1, 1]), and the share of its stay the forecast
    covers. A planner charges in the cheapest steps before a departure; a port's embedding
    cannot work that out from the pooled site fields, since the departure is the port's and
    the prices are the site's.

    With ``load_ranks`` each port reads the same about the site's inflexible net load (load less
    PV) over the steps before its departure: the share of them with a higher net load than now,
    and how far the highest of them lies above now, over the root's import limit. A demand
    charge rewards charging in the load's valleys and discharging at its peak.

    With ``peak_room`` each port reads how much import is left below the site's peak so far
    (``peak_import_kw``, which the demand charge bills) after the inflexible load and PV now: over
    the root's import limit, over the power all plugged EVs could charge now and over the power
    they could discharge now (each clipped to [-1, 1]). Import up to that peak costs no more
    demand charge, so a planner fills it with all its EVs together; the ratios tell each port
    the share of its power that would fill it exactly, which the pooled fields leave to a
    division an MLP does poorly.

    With ``action_input`` each port also reads its own action (``forward_critic(obs, actions)``):
    the network is then a Q function, the critic of off-policy algorithms (``agents.perport_sac``).
    ``value_outputs`` > 1 widens the pooled critic head, e.g. to the quantiles of a distributional
    critic (``agents.perport_offpolicy``). With ``port_values`` the value also sums a term per
    occupied port, from its embedding and the site context: a Q critic then hands each port's
    action a gradient of its own instead of one diluted by pooling over every port.

    With ``memory_dim`` > 0 the input is the flat observation followed by ``memory_dim`` columns
    of a recurrent site state (``agents.perport_recurrent``), which join the site summary that
    the actor's context and the critic read; ``memory_input(obs)`` is the fixed-size site view
    such a memory reads each step (the scaled site-wide fields and the mean scaled port fields).

    With ``attention_heads`` > 0 each occupied port's embedding also attends to the other
    occupied ports of its env (one multi-head self-attention layer, residual, no position
    encoding), so a port's decision can depend on which other EVs compete with it, beyond what
    the pooled summary carries; equivariance and site-size independence are kept.
    Site-derived index arrays and scales are non-persistent buffers, rebound by ``set_site``.
    """

    def __init__(self, site: SiteParams, embed_dim: int, hidden_dim: int, pooling: Sequence[str],
                 activation: str, head_layers: int = 1, site_power: bool = False, attention_heads: int = 0,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 action_input: bool = False, value_outputs: int = 1, memory_dim: int = 0,
                 port_values: bool = False):
        super().__init__()
        if int(value_outputs) < 1:
            raise ValueError(f"value_outputs must be >= 1, got {value_outputs!r}")
        if int(head_layers) < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers!r}")
        if int(attention_heads) < 0:
            raise ValueError(f"attention_heads must be >= 0, got {attention_heads!r}")
        layout = declared_layout(site)
        self.price_ranks = bool(price_ranks)
        self.load_ranks = bool(load_ranks)
        self.peak_room = bool(peak_room)
        self.action_input = bool(action_input)
        self.port_width = (len(layout.port_fields) + NODE_CONTEXT + (PRICE_CONTEXT if self.price_ranks else 0)
                           + (LOAD_CONTEXT if self.load_ranks else 0)
                           + (PEAK_CONTEXT if self.peak_room else 0) + int(self.action_input))
        self.site_width = len(layout.site_columns)
        self.pooling = tuple(pooling)
        self.memory_dim = int(memory_dim)
        self.memory_input_dim = self.site_width + len(layout.port_fields)
        summary = len(self.pooling) * embed_dim + 1 + self.site_width + self.memory_dim
        self.encoder = _mlp([self.port_width, hidden_dim, embed_dim], activation)
        self.site_encoder = _mlp([summary, hidden_dim], activation)
        self.port_head = nn.Linear(embed_dim, hidden_dim)
        self.context_head = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.deeper_head = (_mlp([hidden_dim] * int(head_layers), activation) if head_layers > 1
                            else None)
        self.action_head = nn.Linear(hidden_dim, 1)
        self.site_power_head = nn.Linear(hidden_dim, 1) if site_power else None
        self.attention = PortAttention(embed_dim, int(attention_heads)) if int(attention_heads) > 0 else None
        self.critic = _mlp([summary, hidden_dim, hidden_dim, int(value_outputs)], activation)
        self.port_value_head = (_mlp([embed_dim + hidden_dim, hidden_dim, int(value_outputs)], activation)
                                if port_values else None)
        self.activation = ACTIVATIONS[activation]()
        self.latent_dim_pi, self.latent_dim_vf = site.num_ports, 1
        self.set_site(site)

    def set_site(self, site: SiteParams) -> None:
        layout = declared_layout(site)
        if len(layout.site_columns) != self.site_width:
            raise ValueError(f"site {site.name!r} has {len(layout.site_columns)} site-wide observation "
                             f"columns, this network reads {self.site_width} (forecast_steps and "
                             "demand_forecast must match the site it was built for)")
        ancestors = np.empty((site.num_ports, int(site.node_depth.max()) + 1), dtype=np.int64)
        node = site.port_node.copy()
        for level in range(ancestors.shape[1]):
            ancestors[:, level] = node
            node = np.where(site.node_parent[node] >= 0, site.node_parent[node], node)
        cols = layout.slices
        device = next(self.parameters()).device
        buffers = {
            "inv_scale": 1.0 / observation_scale(site),
            "port_columns": layout.port_columns.reshape(-1),
            "node_columns": layout.node_columns[:, 0],
            "site_columns": layout.site_columns,
            "ancestors": ancestors.reshape(-1),
            "node_port_lo": site.node_port_lo,
            "node_port_hi": site.node_port_hi,
            "max_charge_columns": np.arange(cols["max_charge_kw"].start, cols["max_charge_kw"].stop),
            "occupied_columns": np.arange(cols["occupied"].start, cols["occupied"].stop),
            "max_discharge_columns": np.arange(cols["max_discharge_kw"].start, cols["max_discharge_kw"].stop),
            "node_limit_kw": site.node_import_limit_kw,
            "price_columns": np.arange(cols["price_buy_eur_kwh"].start, cols["price_buy_eur_kwh"].stop),
            "hours_columns": np.arange(cols["hours_to_departure"].start, cols["hours_to_departure"].stop),
            "remaining_columns": np.arange(cols["remaining_kwh"].start, cols["remaining_kwh"].stop),
            "load_columns": np.arange(cols["site_load_kw"].start, cols["site_load_kw"].stop),
            "pv_columns": np.arange(cols["site_pv_kw"].start, cols["site_pv_kw"].stop),
            "peak_column": np.arange(cols[PEAK_FIELD].start, cols[PEAK_FIELD].stop),
        }
        for name, value in buffers.items():
            tensor = torch.as_tensor(np.array(value), device=device)
            self.register_buffer(name, tensor.float() if tensor.is_floating_point() else tensor,
                                 persistent=False)
        self.occupied_field = layout.port_fields.index("occupied")
        self.path_length = ancestors.shape[1]
        self.dt_hours = float(site.dt_hours)
        self.observation_size = layout.size
        self.latent_dim_pi = site.num_ports
        self.site = site

    def _inputs(self, obs: torch.Tensor, actions: torch.Tensor | None = None):
        b, p = obs.shape[0], self.latent_dim_pi
        scaled = obs[:, :self.observation_size] * self.inv_scale
        ports = scaled.index_select(1, self.port_columns).view(b, p, -1)
        headroom_kw = obs.index_select(1, self.node_columns)
        wanted = torch.cumsum(obs.index_select(1, self.max_charge_columns).clamp(min=0.0), dim=1)
        wanted = torch.nn.functional.pad(wanted, (1, 0))
        wanted_kw = wanted.index_select(1, self.node_port_hi) - wanted.index_select(1, self.node_port_lo)
        relative = headroom_kw / self.node_limit_kw
        served = (headroom_kw / wanted_kw.clamp(min=1e-3)).clamp(-1.0, 1.0)
        path = torch.stack([relative, served], dim=2).index_select(1, self.ancestors)
        ports = torch.cat([ports, path.view(b, p, self.path_length, NODE_CONTEXT).amin(dim=2)], dim=2)
        if self.price_ranks:
            ports = torch.cat([ports, self._price_context(obs)], dim=2)
        if self.load_ranks:
            ports = torch.cat([ports, self._load_context(obs)], dim=2)
        if self.peak_room:
            ports = torch.cat([ports, self._peak_context(obs, headroom_kw[:, 0], wanted[:, -1], p)], dim=2)
        if self.action_input:
            if actions is None or actions.shape != (b, p):
                raise ValueError(f"this network reads each port's action: pass actions of shape {(b, p)}")
            ports = torch.cat([ports, actions.to(ports.dtype).unsqueeze(2)], dim=2)
        occupied = ports[:, :, self.occupied_field] > 0.5
        return ports, occupied, scaled.index_select(1, self.site_columns)

    def _departure_window(self, obs: torch.Tensor, leads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each port's steps to its departure (B, P), and which forecast leads 1 .. ``leads`` come
        before it (B, P, leads) bool."""
        steps_left = obs.index_select(1, self.hours_columns).clamp(min=0.0) / self.dt_hours
        in_window = steps_left.clamp(max=float(leads)).floor()
        return steps_left, torch.arange(leads, device=obs.device, dtype=obs.dtype) < in_window.unsqueeze(2)

    def _price_context(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, P, PRICE_CONTEXT): each port's view of the forecast buy prices before its departure."""
        price = obs.index_select(1, self.price_columns)
        leads = price.shape[1] - 1
        if leads == 0:
            return obs.new_zeros((obs.shape[0], self.latent_dim_pi, PRICE_CONTEXT))
        steps_left, before = self._departure_window(obs, leads)
        count = before.sum(dim=2).to(obs.dtype)
        cheaper_steps = ((price[:, 1:] < price[:, :1]).unsqueeze(1) & before).sum(dim=2).to(obs.dtype)
        power_kw = obs.index_select(1, self.max_charge_columns).clamp(min=1e-3)
        needed_steps = obs.index_select(1, self.remaining_columns).clamp(min=0.0) / (power_kw * self.dt_hours)
        share = cheaper_steps / count.clamp(min=1.0)
        slack = ((cheaper_steps - needed_steps) / leads).clamp(-1.0, 1.0)
        cover = steps_left.clamp(max=float(leads)) / steps_left.clamp(min=1.0)
        return torch.stack([share, slack, cover.clamp(max=1.0)], dim=2)

    def _load_context(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, P, LOAD_CONTEXT): each port's view of the site's net load before its departure."""
        net_kw = obs.index_select(1, self.load_columns) - obs.index_select(1, self.pv_columns)
        leads = net_kw.shape[1] - 1
        if leads == 0:
            return obs.new_zeros((obs.shape[0], self.latent_dim_pi, LOAD_CONTEXT))
        _, before = self._departure_window(obs, leads)
        ahead = (net_kw[:, 1:] - net_kw[:, :1]).unsqueeze(1)
        count = before.sum(dim=2).to(obs.dtype)
        higher = ((ahead > 0) & before).sum(dim=2).to(obs.dtype) / count.clamp(min=1.0)
        highest = torch.where(before, ahead, torch.full_like(ahead, -torch.inf)).amax(dim=2)
        highest = torch.where(count > 0, highest, torch.zeros_like(highest)) / self.node_limit_kw[0]
        return torch.stack([higher, highest.clamp(-1.0, 1.0)], dim=2)

    def _peak_context(self, obs: torch.Tensor, root_headroom_kw: torch.Tensor, charge_kw: torch.Tensor,
                      ports: int) -> torch.Tensor:
        """(B, P, PEAK_CONTEXT): the room below the peak so far, the same for every port of an env."""
        room_kw = obs.index_select(1, self.peak_column)[:, 0] - (self.node_limit_kw[0] - root_headroom_kw)
        discharge_kw = obs.index_select(1, self.max_discharge_columns).clamp(min=0.0).sum(dim=1)
        context = torch.stack([room_kw / self.node_limit_kw[0], room_kw / charge_kw.clamp(min=1e-3),
                               room_kw / discharge_kw.clamp(min=1e-3)], dim=1).clamp(-1.0, 1.0)
        return context.unsqueeze(1).expand(-1, ports, -1)

    def _summary(self, obs: torch.Tensor, actions: torch.Tensor | None = None):
        """Embeddings of the occupied ports (M, E), their flat port index and env (M,), and the
        site summary (B, S): pooled embeddings, occupied share and site-wide fields."""
        ports, occupied, site = self._inputs(obs, actions)
        b, p = occupied.shape
        rows = occupied.reshape(-1).nonzero().squeeze(1)
        env = torch.div(rows, p, rounding_mode="floor")
        embedded = self.activation(self.encoder(ports.reshape(b * p, -1).index_select(0, rows)))
        if self.attention is not None:
            embedded = embedded + self._attend(embedded, rows, occupied)
        limits_kw = tuple(obs.index_select(1, columns).reshape(-1).index_select(0, rows).clamp(min=0.0)
                          for columns in (self.max_charge_columns, self.max_discharge_columns))
        count = occupied.sum(dim=1, keepdim=True).to(embedded.dtype)
        zeros = embedded.new_zeros((b, embedded.shape[1]))
        pooled = []
        if "mean" in self.pooling:
            pooled.append(zeros.index_add(0, env, embedded) / count.clamp(min=1.0))
        if "max" in self.pooling:
            index = env.unsqueeze(1).expand(-1, embedded.shape[1])
            pooled.append(zeros.scatter_reduce(0, index, embedded, "amax", include_self=False))
        memory = [obs[:, self.observation_size:]] if self.memory_dim else []
        return (embedded, rows, env, limits_kw), torch.cat([*pooled, count / p, site, *memory], dim=1)

    def memory_input(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, ``memory_input_dim``): the scaled site-wide fields and the mean scaled port fields."""
        scaled = obs[:, :self.observation_size] * self.inv_scale
        ports = scaled.index_select(1, self.port_columns).view(obs.shape[0], self.latent_dim_pi, -1)
        return torch.cat([scaled.index_select(1, self.site_columns), ports.mean(dim=1)], dim=1)

    def _attend(self, embedded: torch.Tensor, rows: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
        """Self-attention among each env's occupied ports (M, E); an env with no EV attends to a
        placeholder, which no occupied row reads."""
        b, p = occupied.shape
        padded = embedded.new_zeros((b * p, embedded.shape[1])).index_copy(0, rows, embedded)
        padded = padded.view(b, p, -1)
        first = ~occupied[:, :1] & occupied.any(dim=1, keepdim=True)
        ignored = torch.cat([first, ~occupied[:, 1:]], dim=1)
        return self.attention(padded, ignored).reshape(b * p, -1).index_select(0, rows)

    def _actor(self, ports, summary: torch.Tensor) -> torch.Tensor:
        embedded, rows, env, limits_kw = ports
        site_context = self.activation(self.site_encoder(summary))
        context = self.context_head(site_context).index_select(0, env)
        hidden = self.activation(self.port_head(embedded) + context)
        if self.deeper_head is not None:
            hidden = self.activation(self.deeper_head(hidden))
        port_mean = self.action_head(hidden).squeeze(1)
        if self.site_power_head is not None:
            total_kw = self._site_total_kw(site_context, env, limits_kw)
            port_mean = self._share_out(port_mean, total_kw, env, limits_kw)
        mean = summary.new_zeros(summary.shape[0] * self.latent_dim_pi)
        return mean.scatter(0, rows, port_mean).reshape(summary.shape[0], -1)

    @staticmethod
    def _site_sums(values: torch.Tensor, env: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B,) sums per env of the occupied ports' ``values`` (M,); ``like`` is any (B,) tensor."""
        return torch.zeros_like(like).index_add(0, env, values)

    def _site_total_kw(self, site_context, env, limits_kw) -> torch.Tensor:
        """(B,) the site head's net EV power: a share of the summed charge (or discharge) power."""
        share = torch.tanh(self.site_power_head(site_context).squeeze(1))
        charge_kw, discharge_kw = (self._site_sums(kw, env, share) for kw in limits_kw)
        return torch.where(share >= 0, share * charge_kw, share * discharge_kw)

    def _share_out(self, port_mean, total_kw, env, limits_kw) -> torch.Tensor:
        """Occupied ports' actions (M,) after scaling their charging to the site's total."""
        charge_cap, discharge_cap = limits_kw
        charge_kw = torch.relu(port_mean) * charge_cap
        discharging_kw = self._site_sums(torch.relu(-port_mean) * discharge_cap, env, total_kw)
        asked_kw = self._site_sums(charge_kw, env, total_kw)
        factor = (total_kw + discharging_kw).clamp(min=0.0) / asked_kw.clamp(min=1e-3)
        granted_kw = torch.minimum(charge_kw * factor.index_select(0, env), charge_cap)
        return torch.where(port_mean > 0, granted_kw / charge_cap.clamp(min=1e-6), port_mean)

    def site_power_error(self, obs: torch.Tensor, target_actions: torch.Tensor) -> torch.Tensor:
        """Mean over envs of the squared gap between the site head's net EV power and that of
        ``target_actions`` (B, P), in units of the occupied ports' summed charge power."""
        (_, rows, env, limits_kw), summary = self._summary(obs)
        total_kw = self._site_total_kw(self.activation(self.site_encoder(summary)), env, limits_kw)
        charge_cap, discharge_cap = limits_kw
        target = target_actions.reshape(-1).index_select(0, rows).clamp(-1.0, 1.0)
        target_kw = self._site_sums(torch.where(target > 0, target * charge_cap, target * discharge_cap),
                                    env, total_kw)
        scale = self._site_sums(charge_cap, env, total_kw).clamp(min=1.0)
        return (((total_kw - target_kw) / scale) ** 2).mean()

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        return self._actor(*self._summary(obs))

    def occupied(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, P) bool: the ports with an EV plugged in."""
        return obs.index_select(1, self.occupied_columns) > 0.5

    def forward_critic(self, obs: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, ``value_outputs``) the pooled value, or with ``action_input`` the value of taking
        ``actions`` (B, P)."""
        ports, summary = self._summary(obs, actions)
        value = self.critic(summary)
        if self.port_value_head is None:
            return value
        embedded, _, env, _ = ports
        context = self.activation(self.site_encoder(summary)).index_select(0, env)
        per_port = self.port_value_head(torch.cat([embedded, context], dim=1))
        return value.index_add(0, env, per_port)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ports, summary = self._summary(obs)
        return self._actor(ports, summary), self.critic(summary)


def network_options(site: SiteParams, observation_space: spaces.Space, action_space: spaces.Space, *,
                    embed_dim: int, hidden_dim: int, pooling: Sequence[str], activation: str,
                    head_layers: int, **switches: bool) -> dict[str, Any]:
    """``PerPortNetwork``'s keyword arguments as plain JSON-able values, after checking the
    activation, the poolings and that the spaces fit ``site``; ValueError names what does not.
    ``switches`` are the on/off options (``price_ranks``, ...), kept as bools."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if not pooling or set(pooling) - set(POOLINGS):
        raise ValueError(f"pooling must be a non-empty subset of {POOLINGS}, got {pooling!r}")
    expected = declared_layout(site).size
    if observation_space.shape != (expected,) or action_space.shape != (site.num_ports,):
        raise ValueError(f"spaces {observation_space.shape}, {action_space.shape} do not fit site "
                         f"{site.name!r}: expected ({expected},) and ({site.num_ports},)")
    return {"embed_dim": int(embed_dim), "hidden_dim": int(hidden_dim), "pooling": [str(p) for p in pooling],
            "activation": activation, "head_layers": int(head_layers),
            **{name: bool(value) for name, value in switches.items()}}


def site_spaces(site: SiteParams, like: spaces.Box | None = None) -> tuple[spaces.Box, spaces.Box]:
    """The observation and action spaces of one env of ``site``: actions in its ``action_mode``,
    or, given the action space ``like`` of the site a policy was trained on, one action per port
    within that space's bounds (a policy keeps what its actions mean when it moves to another
    site; ``agents.policy_io.TrainedPolicy.begin`` checks that they mean the same there)."""
    low, high = observation_bounds(site)
    if like is None:
        action = spaces.Box(*action_bounds(site), (action_width(site),), dtype=np.float32)
    else:
        bounds = float(like.low.min()), float(like.high.max())
        action = spaces.Box(*bounds, (site.num_ports,), dtype=np.float32)
    return spaces.Box(low, high, dtype=np.float32), action


class PerPortPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy whose actor is one network shared by every port of a site.

    ## Description

    ``PerPortNetwork`` maps the flat observation (read through ``envs.observation``'s declared
    layout and fixed physical scale, no running normalization) to a Gaussian mean per port,
    with one learned log-std shared by all ports, and to a value pooled over the ports. The
    policy is permutation-equivariant in the ports of a node, and its weights do not depend on
    the number of ports or nodes: ``state_dict()`` holds no site-sized tensor, and
    ``set_site(params)`` rebinds a trained policy to another site with the same forecast
    window (a caltech policy runs on jpl and city). Works with PPO and A2C; gSDE is not
    supported.

    ## Arguments

    * ``site``: the ``SiteParams`` the observations come from (``needs_site``: a training
      pipeline passes it in ``policy_kwargs``).
    * ``embed_dim`` (32), ``hidden_dim`` (64): port embedding and hidden layer widths.
    * ``pooling`` (``["mean", "max"]``): poolings over the occupied ports.
    * ``activation`` (``"tanh"``): one of ``ACTIVATIONS``.
    * ``head_layers`` (1): hidden layers between a port's embedding plus site context and its
      action mean.
    * ``site_power`` (False): a site head sets the EVs' net power for the whole site and the
      ports' charging is scaled to it (``PerPortNetwork``).
    * ``attention_heads`` (0): > 0 adds self-attention among the occupied ports, with that many
      heads (``embed_dim`` must be a multiple of it).
    * ``price_ranks`` (False): each port also reads where the price now ranks among the forecast
      steps before its departure (``PerPortNetwork``).
    * ``load_ranks`` (False): the same for the site's inflexible net load (``PerPortNetwork``).
    * ``peak_room`` (False): each port also reads the import left below the site's peak so far
      (``PerPortNetwork``).
    * ``log_std_init`` (0.0), ``ortho_init`` (True): as for SB3's ``ActorCriticPolicy``.
    * ``occupied_likelihood`` (False): an action's log-probability and entropy sum over the
      occupied ports only. An empty port's action changes nothing, so its noise only adds
      variance to PPO's probability ratio (54 dimensions on caltech, most of them empty at
      night); the sampled actions are the same either way.
    ``config()`` returns these arguments but the site, JSON-able, so that weights plus config
    rebuild the policy without pickle. Other keyword arguments go to ``ActorCriticPolicy``.

    >>> from stable_baselines3 import PPO
    >>> from envs.sb3 import SmartChargingVecEnv
    >>> env = SmartChargingVecEnv(num_envs=4, site="caltech", horizon_steps=8)
    >>> model = PPO(PerPortPolicy, env, n_steps=8, batch_size=32, policy_kwargs={"site": env.params})
    >>> model.policy.predict(env.reset(), deterministic=True)[0].shape
    (4, 54)
    >>> from envs.site import load_site
    >>> model.policy.set_site(load_site("jpl"))
    >>> obs = np.zeros((2, model.policy.observation_space.shape[0]), dtype=np.float32)
    >>> model.policy.predict(obs, deterministic=True)[0].shape
    (2, 52)
    """

    needs_site = True

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 site_power: bool = False, attention_heads: int = 0, price_ranks: bool = False,
                 load_ranks: bool = False, peak_room: bool = False, log_std_init: float = 0.0,
                 ortho_init: bool = True,
                 use_sde: bool = False, occupied_likelihood: bool = False, **kwargs: Any):
        if use_sde:
            raise ValueError("PerPortPolicy does not support gSDE (use_sde=True)")
        self.site = site
        self.occupied_likelihood = bool(occupied_likelihood)
        self.network_kwargs = {**network_options(
            site, observation_space, action_space, embed_dim=embed_dim, hidden_dim=hidden_dim,
            pooling=pooling, activation=activation, head_layers=head_layers, site_power=site_power,
            price_ranks=price_ranks, load_ranks=load_ranks, peak_room=peak_room),
            "attention_heads": int(attention_heads)}
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=ortho_init,
                         log_std_init=log_std_init, **kwargs)

    def _build(self, lr_schedule) -> None:
        install_network(self, PerPortNetwork(self.site, **self.network_kwargs), lr_schedule)

    def set_site(self, site: SiteParams) -> None:
        """Rebind the policy to another site's layout, scales and spaces; the weights stay."""
        self.mlp_extractor.set_site(site)
        self.observation_space, self.action_space = site_spaces(site, self.action_space)
        self.site = site

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, "log_std_init": float(self.log_std_init),
                "ortho_init": bool(self.ortho_init), "occupied_likelihood": self.occupied_likelihood}

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        if not self.occupied_likelihood:
            return super().forward(obs, deterministic)
        features = self.extract_features(obs)
        mean, latent_vf = self.mlp_extractor(features)
        distribution = self._get_action_dist_from_latent(mean)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob, _ = self._occupied_terms(features, distribution, actions)
        return actions, self.value_net(latent_vf), log_prob

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor):
        if not self.occupied_likelihood:
            return super().evaluate_actions(obs, actions)
        features = self.extract_features(obs)
        mean, latent_vf = self.mlp_extractor(features)
        distribution = self._get_action_dist_from_latent(mean)
        log_prob, entropy = self._occupied_terms(features, distribution, actions)
        return self.value_net(latent_vf), log_prob, entropy

    def _occupied_terms(self, features: torch.Tensor, distribution, actions: torch.Tensor):
        """(log-probability, entropy) per env (B,), summed over its occupied ports."""
        mask = self.mlp_extractor.occupied(features).to(actions.dtype)
        normal = distribution.distribution
        return (normal.log_prob(actions) * mask).sum(dim=1), (normal.entropy() * mask).sum(dim=1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for name in ("net_arch", "activation_fn", "squash_output", "full_std", "use_expln"):
            data.pop(name, None)
        data.update(self.config(), site=self.site)
        return data


def install_network(policy: ActorCriticPolicy, network: PerPortNetwork, lr_schedule) -> None:
    """Make ``network`` the whole actor-critic of an SB3 ``ActorCriticPolicy`` being built: its
    action means and value pass through unchanged, one log std is shared by every port, SB3's
    orthogonal initialisation where ``ortho_init`` asks for it, and a fresh optimizer."""
    policy.mlp_extractor = network
    policy.action_net = nn.Identity()
    policy.value_net = nn.Identity()
    policy.log_std = nn.Parameter(torch.full((1,), float(policy.log_std_init)))
    if policy.ortho_init:
        network.apply(lambda m: policy.init_weights(m, gain=np.sqrt(2)))
        policy.init_weights(network.action_head, gain=0.01)
        policy.init_weights(network.critic[-1], gain=1.0)
    policy.optimizer = policy.optimizer_class(policy.parameters(), lr=lr_schedule(1),
                                              **policy.optimizer_kwargs)


class DeterministicActor(nn.Module):
    """Flat observations (B, D) float32 -> the policy's mean actions (B, P) clipped to [-1, 1].

    Shares the modules of an SB3 ``ActorCriticPolicy`` with a Gaussian action distribution
    (``PerPortPolicy`` or ``MlpPolicy``) and equals its ``predict(obs, deterministic=True)``;
    a plain module, ready for tracing and ONNX export.
    """

    def __init__(self, policy: ActorCriticPolicy):
        super().__init__()
        if not isinstance(policy.action_space, spaces.Box) or policy.use_sde or policy.squash_output:
            raise ValueError("a deterministic actor needs a Box action space and a plain Gaussian policy")
        self.features_extractor = policy.pi_features_extractor
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net
        low, high = policy.action_space.low, policy.action_space.high
        if not (np.all(low == -1.0) and np.all(high == 1.0)):
            raise ValueError("a deterministic actor needs actions in [-1, 1]")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        latent = self.mlp_extractor.forward_actor(self.features_extractor(obs.float()))
        return self.action_net(latent).clamp(-1.0, 1.0)


class SquashedActor(nn.Module):
    """Flat observations (B, D) -> tanh of a per-port network's action means (B, P), rescaled from
    [-1, 1] to the action space [``low``, ``high``]: the deterministic action of a squashed actor
    (``agents.perport_sac``, ``agents.perport_td3``, ``agents.perport_tqc``)."""

    def __init__(self, network: PerPortNetwork, low: float = -1.0, high: float = 1.0):
        super().__init__()
        self.network = network
        self.low, self.high = float(low), float(high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        squashed = torch.tanh(self.network.forward_actor(obs.float()))
        if (self.low, self.high) == (-1.0, 1.0):
            return squashed
        return self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)


def deterministic_actor(policy) -> nn.Module:
    """The deterministic actor of a ``PerPortPolicy``, an SB3 ``MlpPolicy`` or an off-policy
    per-port policy (SAC, TD3, TQC): the same export path for all."""
    network = getattr(getattr(policy, "actor", None), "network", None)
    if isinstance(network, PerPortNetwork):
        space = policy.action_space
        return SquashedActor(network, float(space.low.min()), float(space.high.max()))
    return DeterministicActor(policy)
