"""Node-limit projection: the port powers closest to a request that every node of the tree can carry.

Arrays are (B, P) over envs and ports and (B, N) over nodes; the tree is walked level by level
(its depth), never port by port or env by env.
"""

from __future__ import annotations

import functools

import numpy as np

from envs.site import SiteParams

ROUND_OFF_KW = 1e-9


def node_flows(params: SiteParams, power_kw: np.ndarray, node_exo_kw: np.ndarray) -> np.ndarray:
    """Net flow (B, N) into every node: inflexible load - PV of its subtree plus its ports."""
    if params.port_node_incidence is not None:
        return node_exo_kw + power_kw @ params.port_node_incidence
    prefix = _prefix_sum(power_kw)
    return node_exo_kw + prefix[:, params.node_port_hi] - prefix[:, params.node_port_lo]


def project_to_limits(params: SiteParams, power_kw: np.ndarray, node_exo_kw: np.ndarray):
    """The schedule nearest ``power_kw`` within every node limit, or with the least violation.

    Each port keeps the sign of its request and at most its size (a charging port charges
    between 0 and its request, a discharging one discharges between 0 and its request). Among
    those schedules the projection returns one within every node's import and export limits
    whenever one exists; otherwise one whose violation, the kW beyond any node's limit summed
    over nodes, is the least any such schedule has. Requests within every limit pass unchanged.

    The schedule is picked top-down: each node keeps the flow its subtree asks for as far as
    its limits, and those of the nodes below, allow; where it must give way, the charging ports
    under it (cutting import) or the discharging ones (cutting export) give way in proportion
    to what they can give, subtree by subtree, so ports on one node share one scale factor.
    Where no schedule fits every limit, the subtree flows of a least-violation schedule (a
    convex piecewise-linear program solved exactly on the tree) widen the limits it breaks.

    Returns (projected power (B, P), root flow kW (B,), violation kW summed over nodes (B,)).
    """
    flows = node_flows(params, power_kw, node_exo_kw)
    if not ((flows > params.node_import_limit_kw).any() or (flows < params.node_export_floor_kw).any()):
        return power_kw, flows[:, 0], np.zeros(power_kw.shape[0])
    charge = np.maximum(power_kw, 0.0)
    discharge = power_kw - charge
    low = params.node_export_floor_kw - node_exo_kw
    high = params.node_import_limit_kw - node_exo_kw
    power, infeasible = _allocate(params, charge, discharge, low, high)
    if infeasible.any():
        rows = np.flatnonzero(infeasible)
        flow = _least_violation_flows(params, charge[rows], discharge[rows], low[rows], high[rows])
        power[rows] = _allocate(params, charge[rows], discharge[rows], np.minimum(low[rows], flow),
                                np.maximum(high[rows], flow))[0]
    flows = node_flows(params, power, node_exo_kw)
    excess = (np.maximum(flows - params.node_import_limit_kw, 0.0)
              + np.maximum(params.node_export_floor_kw - flows, 0.0))
    excess *= excess > ROUND_OFF_KW
    return power, flows[:, 0], np.add.reduce(excess, axis=1)


_FEASIBLE_TOLERANCE_KW = 1e-9


@functools.lru_cache(maxsize=64)
def _tree(params: SiteParams):
    """Per level, deepest first: its nodes and, for each, the range of its children in the level
    below (their preorder indices lie in the node's subtree); the ports hanging on each node."""
    levels = params.levels_bottom_up
    children = [None]
    for below, level in zip(levels[:-1], levels[1:], strict=True):
        children.append((below, np.searchsorted(below, level + 1),
                         np.searchsorted(below, params.node_subtree_end[level])))
    own_port_hi = np.searchsorted(params.port_node, np.arange(params.num_nodes), side="right")
    return levels, tuple(children), params.node_port_lo, own_port_hi


def _prefix_sum(x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] + 1) + x.shape[2:])
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def _child_sum(values: np.ndarray, children) -> np.ndarray | float:
    """Sum over the children of each node of a level, of per-node ``values`` (B, N, ...)."""
    if children is None:
        return 0.0
    below, lo, hi = children
    prefix = _prefix_sum(values[:, below])
    return prefix[:, hi] - prefix[:, lo]


def _own_port_sums(params: SiteParams, x: np.ndarray) -> np.ndarray:
    _, _, lo, hi = _tree(params)
    prefix = _prefix_sum(x)
    return prefix[:, hi] - prefix[:, lo]


def _allocate(params: SiteParams, charge: np.ndarray, discharge: np.ndarray, low: np.ndarray,
              high: np.ndarray):
    """Ports' powers within their boxes whose subtree sums lie in [low, high] (B, N) where they can.

    Bottom-up, each node's reachable range of subtree port power ``[lo, hi]`` (its own ports'
    boxes plus its children's ranges, cut to its limits) and its natural flow ``nat`` (its
    parts' natural flows, clipped to the range); top-down, each node's flow is handed to its
    parts: all of them move from their natural flow toward the end of their range in one
    common proportion. Returns (power (B, P), infeasible (B,): some range was empty).
    """
    levels, children, _, _ = _tree(params)
    own_charge, own_discharge = _own_port_sums(params, charge), _own_port_sums(params, discharge)
    parts_lo, parts_hi, parts_nat = (np.empty(low.shape) for _ in range(3))
    lo, hi, nat = (np.empty(low.shape) for _ in range(3))
    for level, kids in zip(levels, children, strict=True):
        parts_lo[:, level] = own_discharge[:, level] + _child_sum(lo, kids)
        parts_hi[:, level] = own_charge[:, level] + _child_sum(hi, kids)
        parts_nat[:, level] = own_charge[:, level] + own_discharge[:, level] + _child_sum(nat, kids)
        lo[:, level] = np.maximum(parts_lo[:, level], low[:, level])
        hi[:, level] = np.minimum(parts_hi[:, level], high[:, level])
        nat[:, level] = np.minimum(np.maximum(parts_nat[:, level], lo[:, level]), hi[:, level])
    infeasible = (lo > hi + _FEASIBLE_TOLERANCE_KW).any(axis=1)

    share = np.zeros(low.shape)  # < 0: parts move down toward lo; > 0: up toward hi
    flow = nat.copy()
    for level, kids in zip(reversed(levels), reversed(children), strict=True):
        natural = parts_nat[:, level]
        gap = flow[:, level] - natural
        room = np.where(gap < 0, natural - parts_lo[:, level], parts_hi[:, level] - natural)
        ratio = np.divide(gap, room, out=np.zeros(gap.shape), where=room > 0)
        share[:, level] = np.clip(ratio, -1.0, 1.0, out=ratio)
        if kids is not None:
            below = kids[0]
            parent_share = share[:, params.node_parent[below]]
            flow[:, below] = nat[:, below] + parent_share * np.where(
                parent_share < 0, nat[:, below] - lo[:, below], hi[:, below] - nat[:, below])
    keep_charge = 1.0 + np.minimum(share, 0.0)
    keep_discharge = 1.0 - np.maximum(share, 0.0)
    power = charge * keep_charge[:, params.port_node] + discharge * keep_discharge[:, params.port_node]
    return power, infeasible


def _least_violation_flows(params: SiteParams, charge: np.ndarray, discharge: np.ndarray, low: np.ndarray,
                           high: np.ndarray) -> np.ndarray:
    """Subtree port power (B, N) of a schedule with the least summed violation of [low, high].

    Dynamic programming on the tree with convex piecewise-linear costs: the least violation in
    a node's subtree as a function of its port power has integer slopes (each node adds -1
    below its range and +1 above), so it is kept as its domain start and the length of its
    segment of each slope. A node's function before its own term is the infimal convolution of
    its parts' (slope lengths add up); its optimal flow splits among the parts at the same slope.
    """
    levels, children, _, _ = _tree(params)
    depth = len(levels)
    slopes = np.arange(-depth - 1, depth + 2)
    b, n = low.shape
    start = np.zeros((b, n))
    parts = np.zeros((b, n, len(slopes)))  # segment lengths before the node's own term
    lengths = np.zeros((b, n, len(slopes)))
    zero = depth + 1
    own_discharge = _own_port_sums(params, discharge)
    own_range = _own_port_sums(params, charge) - own_discharge
    for level, kids in zip(levels, children, strict=True):
        start[:, level] = own_discharge[:, level] + _child_sum(start, kids)
        seg = _child_sum(lengths, kids) + np.zeros((b, len(level), len(slopes)))
        seg[:, :, zero] += own_range[:, level]
        parts[:, level] = seg
        seg_start = start[:, level, None] + np.cumsum(seg, axis=2) - seg
        below_range = np.clip(low[:, level, None] - seg_start, 0.0, seg)
        above_range = np.clip(seg_start + seg - high[:, level, None], 0.0, seg)
        within = np.maximum(seg - below_range - above_range, 0.0)
        within[:, :, :-1] += below_range[:, :, 1:]
        within[:, :, 1:] += above_range[:, :, :-1]
        lengths[:, level] = within

    flow = np.empty((b, n))
    flow[:, 0] = start[:, 0] + lengths[:, 0, :zero].sum(axis=1)
    for kids in reversed(children[1:]):
        below = kids[0]
        parent = params.node_parent[below]
        seg = parts[:, parent]
        before = np.cumsum(seg, axis=2) - seg
        with np.errstate(divide="ignore", invalid="ignore"):
            taken = np.where(seg > 0, np.clip((flow[:, parent, None] - start[:, parent, None] - before) / seg,
                                              0.0, 1.0), 0.0)
        flow[:, below] = start[:, below] + (taken * lengths[:, below]).sum(axis=2)
    return flow
