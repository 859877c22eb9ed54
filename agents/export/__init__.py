"""Export for a production scheduler: a trained policy as ``policy.onnx`` + ``manifest.json``, or a
baseline's manifest alone (``agents.scheduler`` runs them). Imports torch only when exporting a policy."""

from agents.export.writer import (
    DEFAULT_FALLBACK,
    ExportError,
    export_baseline,
    export_from_config,
    export_policy,
    onnx_actions,
    random_observations,
)

__all__ = ["DEFAULT_FALLBACK", "ExportError", "export_baseline", "export_from_config", "export_policy",
           "onnx_actions", "random_observations"]
