"""Per-port RecurrentPPO: the per-port actor-critic with an LSTM over a fixed-size view of the site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn

from agents.networks import POOLINGS, PerPortNetwork, install_network, network_options, site_spaces
from envs.site import SiteParams


class PerPortRecurrentPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib recurrent actor-critic whose actor and critic are the per-port network, with
    an LSTM that remembers the site, not the ports.

    ## Description

    Each step the actor's LSTM (and the critic's own LSTM) reads ``PerPortNetwork.memory_input``:
    the scaled site-wide fields and the mean of the scaled port fields, a vector whose size does
    not depend on the number of ports. Its output joins the site summary of the per-port network
    (``memory_dim``), so every port's action can depend on what the site has seen earlier in
    the episode (the day's arrivals, the peak built up, prices gone by) while the weights stay
    shared by every port, permutation-equivariant and independent of the site's size;
    ``set_site(params)`` rebinds a trained policy to another site with the same forecast window.
    For ``sb3_contrib.RecurrentPPO`` (``agent=recurrent_ppo_perport``). ``agents.load_policy``
    keeps the hidden state between calls and resets it in ``begin``.

    ## Arguments

    * ``site`` and ``embed_dim``, ``hidden_dim``, ``pooling``, ``activation``, ``head_layers``,
      ``price_ranks``, ``load_ranks``, ``peak_room``: as for ``agents.networks.PerPortPolicy``.
    * ``lstm_hidden_size`` (32), ``n_lstm_layers`` (1): the LSTMs' width and depth.
    * ``log_std_init`` (0.0), ``ortho_init`` (True): as for SB3's ``ActorCriticPolicy``.

    The critic has its own LSTM (``enable_critic_lstm``); a shared LSTM or none for the critic,
    and gSDE, are refused. ``config()`` returns the arguments but the site, JSON-able.
    """

    needs_site = True

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule,
                 site: SiteParams, embed_dim: int = 32, hidden_dim: int = 64,
                 pooling: Sequence[str] = POOLINGS, activation: str = "tanh", head_layers: int = 1,
                 price_ranks: bool = False, load_ranks: bool = False, peak_room: bool = False,
                 lstm_hidden_size: int = 32, n_lstm_layers: int = 1, log_std_init: float = 0.0,
                 ortho_init: bool = True, use_sde: bool = False, shared_lstm: bool = False,
                 enable_critic_lstm: bool = True, **kwargs: Any):
        if use_sde:
            raise ValueError("PerPortRecurrentPolicy does not support gSDE (use_sde=True)")
        if shared_lstm or not enable_critic_lstm:
            raise ValueError("PerPortRecurrentPolicy gives the critic its own LSTM: shared_lstm must be "
                             "false and enable_critic_lstm true")
        if int(lstm_hidden_size) < 1 or int(n_lstm_layers) < 1:
            raise ValueError(f"lstm_hidden_size and n_lstm_layers must be >= 1, got {lstm_hidden_size!r}, "
                             f"{n_lstm_layers!r}")
        self.site = site
        self.network_kwargs = network_options(
            site, observation_space, action_space, embed_dim=embed_dim, hidden_dim=hidden_dim,
            pooling=pooling, activation=activation, head_layers=head_layers, price_ranks=price_ranks,
            load_ranks=load_ranks, peak_room=peak_room)
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=ortho_init,
                         log_std_init=log_std_init, lstm_hidden_size=int(lstm_hidden_size),
                         n_lstm_layers=int(n_lstm_layers), **kwargs)
        width, layers = self.mlp_extractor.memory_input_dim, int(n_lstm_layers)
        self.lstm_actor = nn.LSTM(width, int(lstm_hidden_size), num_layers=layers, **self.lstm_kwargs)
        self.lstm_critic = nn.LSTM(width, int(lstm_hidden_size), num_layers=layers, **self.lstm_kwargs)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _build(self, lr_schedule) -> None:
        network = PerPortNetwork(self.site, **self.network_kwargs, memory_dim=self.lstm_output_dim)
        install_network(self, network, lr_schedule)

    def _process_sequence(self, features: torch.Tensor, lstm_states, episode_starts: torch.Tensor,
                          lstm: nn.LSTM):
        """The observation (B, D) followed by the LSTM's output over the site view (B, hidden)."""
        memory, states = RecurrentActorCriticPolicy._process_sequence(
            self.mlp_extractor.memory_input(features), lstm_states, episode_starts, lstm)
        return torch.cat([features, memory], dim=1), states

    def set_site(self, site: SiteParams) -> None:
        """Rebind the policy to another site's layout, scales and spaces; the weights stay."""
        self.mlp_extractor.set_site(site)
        self.observation_space, self.action_space = site_spaces(site, self.action_space)
        self.site = site

    def config(self) -> dict[str, Any]:
        """The constructor's arguments other than the site, as plain JSON-able values."""
        return {**self.network_kwargs, "lstm_hidden_size": int(self.lstm_output_dim),
                "n_lstm_layers": int(self.lstm_actor.num_layers), "log_std_init": float(self.log_std_init),
                "ortho_init": bool(self.ortho_init)}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for name in ("net_arch", "activation_fn", "squash_output", "full_std", "use_expln", "shared_lstm",
                     "enable_critic_lstm", "lstm_kwargs"):
            data.pop(name, None)
        data.update(self.config(), site=self.site)
        return data
