"""The action checks every entry point shares: the core and the Gymnasium, vector and SB3 shells."""

from __future__ import annotations

import numpy as np

ACTION_KINDS = "fiub"  # float, int, unsigned, bool: read as float64 fractions


def action_array(action, expected_shape: tuple[int, ...], context: str) -> np.ndarray:
    """``action`` as a float64 array (no copy when it already is one), or ValueError.

    The message names the expected shape (``context`` follows it, e.g. which site's ports) or
    says that the dtype is not numeric: text such as ``["0.5"]``, complex numbers, datetimes and
    Python objects are refused, never converted. The caller's array is never modified.
    """
    try:
        array = np.asarray(action)
    except ValueError as err:
        raise ValueError(f"action is not an array of numbers ({err}), expected shape {expected_shape}"
                         f"{context}") from None
    if array.shape != expected_shape:
        raise ValueError(f"action has shape {array.shape}, expected {expected_shape}{context}")
    if array.dtype.kind not in ACTION_KINDS:
        raise ValueError(f"action has dtype {array.dtype}, expected a float array")
    return array.astype(np.float64, copy=False)


def action_space(params):
    """One env's ``Box`` of actions in the site's ``action_mode``: (P,) in [-1, 1] (``signed``),
    (P,) in [0, 1] (``unit``) or (2P,) in [-1, 1] (``priority``: power, priority per port)."""
    from gymnasium import spaces

    from envs.action_layer import action_bounds, action_width

    low, high = action_bounds(params)
    return spaces.Box(low, high, (action_width(params),), dtype=np.float32)
