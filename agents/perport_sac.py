"""Per-port SAC: the shared per-port network as SAC's squashed Gaussian actor and as its Q critics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gymnasium import spaces
from stable_baselines3.sac.policies import SACPolicy

from agents.networks import POOLINGS
from agents.perport_offpolicy import (
    PerPortOffPolicyMixin,
    PerPortQCritics,
    PerPortSACActor,
    SquashedActorMixin,
    refuse_sde,
)
from envs.site import SiteParams

__all__ = ["PerPortQCritics", "PerPortSACActor", "PerPortSACPolicy"]


class PerPortSACPolicy(SquashedActorMixin, PerPortOffPolicyMixin, SACPolicy):
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
    * ``port_values`` (False): each Q also sums a term per occupied port (``PerPortNetwork``).

    ``config()`` returns these arguments but the site, JSON-able. Other keyword arguments go to
    ``SACPolicy``; gSDE is not supported.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 log_std_init: float = -3.0, n_critics: int = 2, port_values: bool = False,
                 use_sde: bool = False, **kwargs: Any):
        refuse_sde(use_sde, "PerPortSACPolicy")
        self.network_kwargs = self._per_port_options(
            site, observation_space, action_space, n_critics, port_values, embed_dim=embed_dim,
            hidden_dim=hidden_dim, pooling=pooling, activation=activation, head_layers=head_layers,
            price_ranks=price_ranks, load_ranks=load_ranks, peak_room=peak_room)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], log_std_init=log_std_init,
                         n_critics=int(n_critics), **kwargs)

    def make_critic(self, features_extractor=None) -> PerPortQCritics:
        return PerPortQCritics(self.observation_space, self.action_space, self.site, self.network_kwargs,
                               self.critic_kwargs["n_critics"], port_values=self.port_values).to(self.device)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, "log_std_init": float(self.actor_kwargs["log_std_init"]),
                **self._critic_config()}
