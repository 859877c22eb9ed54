"""Agents: rule-based baselines, the offline optimum and MPC, trained policies and their training.

Light on import: ``load_policy`` imports torch only when called.
"""


def load_policy(path, device: str = "cpu"):
    """The trained policy of a run directory or ``policy/`` folder (``agents.policy_io.load_policy``)."""
    from agents.policy_io import load_policy as load

    return load(path, device)
