"""Per-port actors and Q critics for SB3's off-policy algorithms, and the per-port TD3 and TQC policies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from agents.networks import POOLINGS, PerPortNetwork, network_options, site_spaces
from envs.site import SiteParams

_SB3_ARCHITECTURE = ("net_arch", "activation_fn", "use_expln", "clip_mean", "features_extractor_class",
                     "features_extractor_kwargs", "share_features_extractor")


class PerPortSACActor(BasePolicy):
    """A squashed Gaussian actor over a site's ports (SAC, TQC): a ``PerPortNetwork`` gives each
    port's mean, one learned log std is shared by every port, and tanh squashes the sample into
    [-1, 1]."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, site: SiteParams,
                 network_kwargs: dict[str, Any], log_std_init: float):
        super().__init__(observation_space, action_space, squash_output=True)
        self.network = PerPortNetwork(site, **network_kwargs)
        self.log_std = nn.Parameter(torch.full((1,), float(log_std_init)))
        self.action_dist = SquashedDiagGaussianDistribution(site.num_ports)
        self.use_sde = False

    def get_action_dist_params(self, obs: torch.Tensor):
        mean = self.network.forward_actor(obs.float())
        return mean, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean), {}

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std, _ = self.get_action_dist_params(obs)
        return self.action_dist.actions_from_params(mean, log_std, deterministic=deterministic)

    def action_log_prob(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std, _ = self.get_action_dist_params(obs)
        return self.action_dist.log_prob_from_params(mean, log_std)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self(observation, deterministic)


class PerPortTD3Actor(BasePolicy):
    """TD3's deterministic actor over a site's ports: tanh of a ``PerPortNetwork``'s per-port
    means, in [-1, 1] (exploration noise is the algorithm's ``action_noise``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, site: SiteParams,
                 network_kwargs: dict[str, Any]):
        super().__init__(observation_space, action_space, squash_output=True)
        self.network = PerPortNetwork(site, **network_kwargs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.network.forward_actor(obs.float()))

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self(observation)


class PerPortQCritics(BaseModel):
    """``n_critics`` Q functions of ``(obs, actions)``, each a ``PerPortNetwork`` whose ports also
    read their own action (``action_input``) and whose pooled head gives ``value_outputs`` values
    per env (plus a sum of per-port terms with ``port_values``), so Q is invariant when ports and
    their actions are permuted together and its weights fit any site. ``forward`` returns a
    tuple of (B, 1) values (SAC, TD3)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, site: SiteParams,
                 network_kwargs: dict[str, Any], n_critics: int, value_outputs: int = 1,
                 port_values: bool = False):
        super().__init__(observation_space, action_space)
        self.share_features_extractor = False
        self.q_networks: list[PerPortNetwork] = []
        for index in range(n_critics):
            network = PerPortNetwork(site, **network_kwargs, action_input=True, value_outputs=value_outputs,
                                     port_values=port_values)
            self.add_module(f"qf{index}", network)
            self.q_networks.append(network)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(network.forward_critic(obs.float(), actions) for network in self.q_networks)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.q_networks[0].forward_critic(obs.float(), actions)


class PerPortQuantileCritics(PerPortQCritics):
    """TQC's critics: ``n_critics`` per-port Q networks of ``n_quantiles`` outputs each;
    ``forward`` returns the quantiles stacked (B, n_critics, n_quantiles)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, site: SiteParams,
                 network_kwargs: dict[str, Any], n_critics: int, n_quantiles: int, port_values: bool = False):
        super().__init__(observation_space, action_space, site, network_kwargs, n_critics, n_quantiles,
                         port_values)
        self.n_critics, self.n_quantiles = n_critics, n_quantiles
        self.quantiles_total = n_critics * n_quantiles

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.stack(super().forward(obs, actions), dim=1)


class PerPortOffPolicyMixin:
    """What the per-port off-policy policies share: the site they need, rebinding every actor and
    critic (and their targets) to another site, and constructor parameters without SB3's MLP
    arguments."""

    needs_site = True
    site: SiteParams

    def _per_port_options(self, site: SiteParams, observation_space, action_space, n_critics: int,
                          port_values: bool, **options: Any) -> dict[str, Any]:
        if int(n_critics) < 1:
            raise ValueError(f"n_critics must be >= 1, got {n_critics!r}")
        self.site = site
        self.port_values = bool(port_values)
        return network_options(site, observation_space, action_space, **options)

    def _critic_config(self) -> dict[str, Any]:
        return {"n_critics": int(self.critic_kwargs["n_critics"]), "port_values": self.port_values}

    def set_site(self, site: SiteParams) -> None:
        """Rebind every actor and critic, targets included, to another site's layout, scales and
        spaces; the weights stay."""
        self.observation_space, self.action_space = site_spaces(site, self.action_space)
        for name in ("actor", "actor_target", "critic", "critic_target"):
            module = getattr(self, name, None)
            if module is None:
                continue
            for network in module.modules():
                if isinstance(network, PerPortNetwork):
                    network.set_site(site)
            module.observation_space, module.action_space = self.observation_space, self.action_space
        self.site = site

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for name in _SB3_ARCHITECTURE:
            data.pop(name, None)
        data.update(self.config(), site=self.site)
        return data


class SquashedActorMixin:
    """The squashed Gaussian per-port actor of SAC and TQC (``PerPortSACActor``)."""

    def make_actor(self, features_extractor=None) -> PerPortSACActor:
        return PerPortSACActor(self.observation_space, self.action_space, self.site, self.network_kwargs,
                               self.actor_kwargs["log_std_init"]).to(self.device)


def refuse_sde(use_sde: bool, name: str) -> None:
    if use_sde:
        raise ValueError(f"{name} does not support gSDE (use_sde=True)")


class PerPortTD3Policy(PerPortOffPolicyMixin, TD3Policy):
    """SB3 TD3 policy whose deterministic actor and twin critics are per-port networks.

    ## Description

    The actor (``PerPortTD3Actor``: tanh of each port's mean) and each critic (``PerPortQCritics``)
    read the flat observation through the env's declared layout and fixed scale, as
    ``agents.networks.PerPortPolicy`` does: permutation-equivariant in the ports of a node, no
    site-sized tensor in the weights, and ``set_site(params)`` rebinds actor, critics and their
    targets to another site with the same forecast window. For ``stable_baselines3.TD3``
    (``agent=td3_perport``); exploration is the agent's ``action_noise_std``.

    ## Arguments

    * ``site``: the ``SiteParams`` of the observations (``needs_site``).
    * ``embed_dim`` (32), ``hidden_dim`` (64), ``pooling``, ``activation`` (``"tanh"``),
      ``head_layers`` (1), ``price_ranks``, ``load_ranks``, ``peak_room`` (False): as for
      ``PerPortPolicy``; the critics use the same widths and options.
    * ``n_critics`` (2): Q networks for the clipped double-Q target.
    * ``port_values`` (False): each Q also sums a term per occupied port (``PerPortNetwork``).

    ``config()`` returns these arguments but the site, JSON-able. Other keyword arguments go to
    ``TD3Policy``.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 n_critics: int = 2, port_values: bool = False, **kwargs: Any):
        self.network_kwargs = self._per_port_options(
            site, observation_space, action_space, n_critics, port_values, embed_dim=embed_dim,
            hidden_dim=hidden_dim, pooling=pooling, activation=activation, head_layers=head_layers,
            price_ranks=price_ranks, load_ranks=load_ranks, peak_room=peak_room)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], n_critics=int(n_critics),
                         **kwargs)

    def make_actor(self, features_extractor=None) -> PerPortTD3Actor:
        return PerPortTD3Actor(self.observation_space, self.action_space, self.site,
                               self.network_kwargs).to(self.device)

    def make_critic(self, features_extractor=None) -> PerPortQCritics:
        return PerPortQCritics(self.observation_space, self.action_space, self.site, self.network_kwargs,
                               self.critic_kwargs["n_critics"], port_values=self.port_values).to(self.device)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, **self._critic_config()}


class PerPortTQCPolicy(SquashedActorMixin, PerPortOffPolicyMixin, TQCPolicy):
    """sb3-contrib TQC policy whose squashed Gaussian actor and quantile critics are per-port networks.

    ## Description

    The actor is ``PerPortSACActor`` (one log std shared by every port); each of the
    ``n_critics`` critics is a per-port Q network with ``n_quantiles`` pooled outputs
    (``PerPortQuantileCritics``), so TQC truncates the pooled return distribution as usual. The
    layout, scaling, equivariance and ``set_site`` are those of ``PerPortTD3Policy``. For
    ``sb3_contrib.TQC`` (``agent=tqc_perport``).

    ## Arguments

    * ``site`` and the network options: as ``PerPortTD3Policy``.
    * ``log_std_init`` (-3.0): the shared log std before squashing.
    * ``n_critics`` (2), ``n_quantiles`` (25): critics and quantiles per critic.
    * ``port_values`` (False): as for ``PerPortTD3Policy``.

    ``config()`` returns these arguments but the site, JSON-able. Other keyword arguments go to
    ``TQCPolicy``; gSDE is not supported.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 log_std_init: float = -3.0, n_critics: int = 2, n_quantiles: int = 25,
                 port_values: bool = False, use_sde: bool = False, **kwargs: Any):
        refuse_sde(use_sde, "PerPortTQCPolicy")
        if int(n_quantiles) < 1:
            raise ValueError(f"n_quantiles must be >= 1, got {n_quantiles!r}")
        self.network_kwargs = self._per_port_options(
            site, observation_space, action_space, n_critics, port_values, embed_dim=embed_dim,
            hidden_dim=hidden_dim, pooling=pooling, activation=activation, head_layers=head_layers,
            price_ranks=price_ranks, load_ranks=load_ranks, peak_room=peak_room)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], log_std_init=log_std_init,
                         n_critics=int(n_critics), n_quantiles=int(n_quantiles), **kwargs)

    def make_critic(self, features_extractor=None) -> PerPortQuantileCritics:
        return PerPortQuantileCritics(self.observation_space, self.action_space, self.site,
                                      self.network_kwargs, self.critic_kwargs["n_critics"],
                                      self.critic_kwargs["n_quantiles"], self.port_values).to(self.device)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, "log_std_init": float(self.actor_kwargs["log_std_init"]),
                **self._critic_config(), "n_quantiles": int(self.critic_kwargs["n_quantiles"])}
