"""Action modes: what an action means, and the priority safety layer that fills node headroom.

The site's ``action_mode`` picks how ``core.step`` reads an action (B envs, P ports):

* ``signed`` (B, P) in [-1, 1]: a positive entry is the fraction of the port's available charge
  power, a negative one the fraction of its available discharge power.
* ``unit`` (B, P) in [0, 1]: on a one-way site (no port can discharge) the fraction of the
  available charge power, 0 = off, 1 = full; on a bidirectional site ``2 a - 1`` as a signed
  fraction (0 = full discharge, 0.5 = idle, 1 = full charge).
* ``priority`` (B, 2P) in [-1, 1], port-major: entries ``2 i`` and ``2 i + 1`` are port ``i``'s
  signed power fraction (as in ``signed``) and its priority (higher first). The requested
  powers pass through ``fill_by_priority``: discharging fills each node's export room in
  priority order, then charging fills each node's import headroom, so the agent's request never
  breaks a node limit and no headroom a port asked for is left idle.
"""

from __future__ import annotations

import functools

import numpy as np

from envs.projection import node_flows
from envs.site import ACTION_MODES, SiteParams

__all__ = ["ACTION_MODES", "action_bounds", "action_width", "fill_in_order", "fill_by_priority",
           "mode_bounds", "mode_width", "signed_fraction"]


def action_width(params: SiteParams) -> int:
    """Entries of one env's action: 2 per port in ``priority`` mode, else 1."""
    return mode_width(params.action_mode, params.num_ports)


def action_bounds(params: SiteParams) -> tuple[float, float]:
    """(low, high) of every action entry in the site's mode."""
    return mode_bounds(params.action_mode)


def mode_width(mode: str, num_ports: int) -> int:
    """Entries of one env's action in ``mode`` for ``num_ports`` ports."""
    return 2 * num_ports if mode == "priority" else num_ports


def mode_bounds(mode: str) -> tuple[float, float]:
    """(low, high) of every action entry in ``mode``."""
    return (0.0, 1.0) if mode == "unit" else (-1.0, 1.0)


def signed_fraction(params: SiteParams, action: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(signed fraction (B, P), priority (B, P) or None) of a checked, clipped action."""
    if params.action_mode == "priority":
        return action[:, 0::2], action[:, 1::2]
    if params.action_mode == "unit" and params.bidirectional:
        return 2.0 * action - 1.0, None
    return action, None


def fill_by_priority(params: SiteParams, charge_kw: np.ndarray, discharge_kw: np.ndarray,
                     priority: np.ndarray, node_exo_kw: np.ndarray) -> np.ndarray:
    """Port power (B, P): requests granted in priority order within every node's limits.

    ``charge_kw`` (>= 0) and ``discharge_kw`` (<= 0) are the requests; ``priority`` (B, P),
    higher first, ports of equal priority sharing in proportion to their requests. Discharging
    is granted first, against each node's export room (its export limit plus its inflexible
    load less PV; charging earns discharging no credit); then charging, against each node's
    import headroom (its import limit less that exogenous flow, plus the discharging granted
    below it). Every node stays within its limits whenever its exogenous flow alone does; a
    port gets less than it asked only where some node above it is full: at its import limit for
    a charging port, at its export limit counting discharging alone for a discharging one.
    """
    order_key = -priority
    grant = np.zeros(charge_kw.shape)
    if params.bidirectional:
        room = node_exo_kw + params.node_export_limit_kw
        grant -= fill_in_order(params, order_key, -discharge_kw, room, share_ties=True)
    headroom = params.node_import_limit_kw - node_flows(params, grant, node_exo_kw)
    grant += fill_in_order(params, order_key, charge_kw, headroom, share_ties=True)
    return grant


@functools.lru_cache(maxsize=64)
def _levels(params: SiteParams):
    """Per level, deepest first: its nodes, each port's slot among them (len(level) = none), and
    that slot as a compact sort key."""
    return tuple((level, slot, slot.astype(np.int16 if len(level) < np.iinfo(np.int16).max else np.int64))
                 for level, slot in zip(params.levels_bottom_up, params.level_port_slot, strict=True))


def fill_orders(params: SiteParams, order_key: np.ndarray) -> list:
    """The port orders ``fill_in_order`` walks for ``order_key`` (B, P), level by level; a caller
    that fills several requests in one order computes them once."""
    by_priority = np.argsort(order_key, axis=1, kind="stable")
    orders = []
    for level, slot, key in _levels(params):
        by_node = np.argsort(key[by_priority], axis=1, kind="stable")
        orders.append((level, slot, np.take_along_axis(by_priority, by_node, 1)))
    return orders


def fill_in_order(params: SiteParams, order_key: np.ndarray, request_kw: np.ndarray, room_kw: np.ndarray,
                  share_ties: bool = False, orders: list | None = None) -> np.ndarray:
    """Grant (B, P) kW: ports in increasing ``order_key`` take their request (>= 0) while it fits.

    Levels go bottom-up; at each node, a port gets at most the node's ``room_kw`` (B, N) less
    what the ports before it below that node were granted so far. Later cuts higher up only
    lower the grants, so every node ends within its room (a negative room grants nothing). Ties
    in ``order_key`` go in port order, or with ``share_ties`` take one common fraction of their
    grants so far where the room cannot hold them all. ``orders``: ``fill_orders(params,
    order_key)``, when the caller has them.
    """
    b = request_kw.shape[0]
    rows = np.arange(b)[:, None]
    grant = request_kw.copy()
    zeros, unlimited = np.zeros((b, 1)), np.full((b, 1), np.inf)
    if share_ties:
        positions = np.broadcast_to(np.arange(request_kw.shape[1]), request_kw.shape)
        last = request_kw.shape[1] - 1
    for level, slot, order in fill_orders(params, order_key) if orders is None else orders:
        sorted_grant = grant[rows, order]
        cumulative = np.cumsum(sorted_grant, axis=1)
        before = cumulative - sorted_grant
        segment = np.concatenate([node_flows(params, grant, 0.0)[:, level], zeros], axis=1)
        segment_start = np.cumsum(segment, axis=1) - segment
        sorted_slot = slot[order]
        room = np.concatenate([room_kw[:, level], unlimited], axis=1)[rows, sorted_slot]
        if not share_ties:
            room -= before - segment_start[rows, sorted_slot]
            grant[rows, order] = np.minimum(sorted_grant, np.maximum(room, 0.0))
            continue
        sorted_key = order_key[rows, order]
        new_group = np.ones(sorted_key.shape, dtype=bool)
        new_group[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
        new_group[:, 1:] |= sorted_slot[:, 1:] != sorted_slot[:, :-1]
        start = np.maximum.accumulate(np.where(new_group, positions, 0), axis=1)
        ends_group = np.ones(sorted_key.shape, dtype=bool)
        ends_group[:, :-1] = new_group[:, 1:]
        end = np.minimum.accumulate(np.where(ends_group, positions, last)[:, ::-1], axis=1)[:, ::-1]
        group_before = np.take_along_axis(before, start, 1)
        group_kw = np.take_along_axis(cumulative, end, 1) - group_before
        room -= group_before - segment_start[rows, sorted_slot]
        np.maximum(room, 0.0, out=room)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = sorted_grant * (room / group_kw)
        grant[rows, order] = np.where(group_kw <= room, sorted_grant, scaled)
    return grant
