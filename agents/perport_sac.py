"""Per-port SAC: the shared per-port network as SAC's squashed Gaussian actor and as its Q critics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from torch import nn

from agents.networks import POOLINGS, PerPortNetwork, network_options, site_spaces
from envs.site import SiteParams


class PerPortSACActor(BasePolicy):
    """SAC's actor over a site's ports: a ``PerPortNetwork`` gives each port's Gaussian mean, one
    learned log std is shared by every port, and tanh squashes the sample into [-1, 1]."""

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


class PerPortQCritics(BaseModel):
    """``n_critics`` Q functions ``Q(obs, actions)`` (B, 1) each, for SAC's clipped double Q: each a
    ``PerPortNetwork`` whose ports also read their own action (``action_input``) and whose pooled
    critic head gives the value, so Q is invariant when ports and their actions are permuted
    together and its weights fit any site."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, site: SiteParams,
                 network_kwargs: dict[str, Any], n_critics: int):
        super().__init__(observation_space, action_space)
        self.share_features_extractor = False
        self.q_networks: list[PerPortNetwork] = []
        for index in range(n_critics):
            network = PerPortNetwork(site, **network_kwargs, action_input=True)
            self.add_module(f"qf{index}", network)
            self.q_networks.append(network)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(network.forward_critic(obs.float(), actions) for network in self.q_networks)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.q_networks[0].forward_critic(obs.float(), actions)


class PerPortSACPolicy(SACPolicy):
    """SB3 SAC policy whose actor and twin critics are per-port networks shared by every port.

    ## Description

    The actor (``PerPortSACActor``) and each critic (``PerPortQCritics``) read the flat observation
    through the env's declared layout and fixed scale, as ``agents.networks.PerPortPolicy`` does,
    so the policy is permutation-equivariant in the ports of a node, its weights hold no
    site-sized tensor, and ``set_site(params)`` rebinds it (actor, critics and target critics) to
    another site with the same forecast window. For ``stable_baselines3.SAC`` (``agent=sac_perport``).

    ## Arguments

    * ``site``: the ``SiteParams`` of the observations (``needs_site``: the training pipeline and
      ``agents.load_policy`` pass it in).
    * ``embed_dim`` (32), ``hidden_dim`` (64), ``pooling``, ``activation`` (``"tanh"``),
      ``head_layers`` (1), ``price_ranks``, ``load_ranks``, ``peak_room`` (False): as for
      ``PerPortPolicy``; the critics use the same widths and options.
    * ``log_std_init`` (-3.0): the shared log std before squashing.
    * ``n_critics`` (2): Q networks for the clipped double-Q target.

    ``config()`` returns these arguments but the site, JSON-able. Other keyword arguments go to
    ``SACPolicy``; gSDE is not supported.
    """

    needs_site = True

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 log_std_init: float = -3.0, n_critics: int = 2, use_sde: bool = False, **kwargs: Any):
        if use_sde:
            raise ValueError("PerPortSACPolicy does not support gSDE (use_sde=True)")
        if int(n_critics) < 1:
            raise ValueError(f"n_critics must be >= 1, got {n_critics!r}")
        self.site = site
        self.network_kwargs = network_options(
            site, observation_space, action_space, embed_dim=embed_dim, hidden_dim=hidden_dim,
            pooling=pooling, activation=activation, head_layers=head_layers, price_ranks=price_ranks,
            load_ranks=load_ranks, peak_room=peak_room)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], log_std_init=log_std_init,
                         n_critics=int(n_critics), **kwargs)

    def make_actor(self, features_extractor=None) -> PerPortSACActor:
        return PerPortSACActor(self.observation_space, self.action_space, self.site, self.network_kwargs,
                               self.actor_kwargs["log_std_init"]).to(self.device)

    def make_critic(self, features_extractor=None) -> PerPortQCritics:
        return PerPortQCritics(self.observation_space, self.action_space, self.site, self.network_kwargs,
                               self.critic_kwargs["n_critics"]).to(self.device)

    def set_site(self, site: SiteParams) -> None:
        """Rebind the actor and every critic to another site's layout, scales and spaces; the weights stay."""
        self.actor.network.set_site(site)
        for critics in (self.critic, self.critic_target):
            for network in critics.q_networks:
                network.set_site(site)
        self.observation_space, self.action_space = site_spaces(site)
        for module in (self.actor, self.critic, self.critic_target):
            module.observation_space, module.action_space = self.observation_space, self.action_space
        self.site = site

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, "log_std_init": float(self.actor_kwargs["log_std_init"]),
                "n_critics": int(self.critic_kwargs["n_critics"])}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for name in ("net_arch", "activation_fn", "use_expln", "clip_mean", "features_extractor_class",
                     "features_extractor_kwargs"):
            data.pop(name, None)
        data.update(self.config(), site=self.site)
        return data
