"""The actor as an ONNX graph: the observation scaling folded in, a dynamic batch axis (torch)."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.onnx import symbolic_helper

from agents.scheduler.artifact import INPUT_NAME, OUTPUT_NAME

OPSET = 18


class ScaledActor(nn.Module):
    """Flat physical observations (B, D) -> actions (B, P): a frozen ``VecNormalize`` scaling
    (``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``, when given) before the
    deterministic actor (``agents.networks.deterministic_actor``)."""

    def __init__(self, actor: nn.Module, mean: np.ndarray | None = None, var: np.ndarray | None = None,
                 clip_obs: float = 10.0, epsilon: float = 1e-8):
        super().__init__()
        self.actor = actor
        self.normalized = mean is not None
        if self.normalized:
            std = np.sqrt(np.asarray(var, dtype=np.float64) + epsilon)
            self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
            self.register_buffer("std", torch.as_tensor(std.astype(np.float32)))
            self.clip_obs = float(clip_obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            obs = ((obs - self.mean) / self.std).clamp(-self.clip_obs, self.clip_obs)
        return self.actor(obs)


@symbolic_helper.parse_args("v", "i", "v", "v", "s", "b")
def _scatter_reduce(g, self, dim, index, src, reduce, include_self):
    """``scatter_reduce`` for sum, prod, amin, amax, with ``include_self=False`` too (the per-port
    network's max pooling): scatter onto -inf (+inf for amin) and keep ``self`` where nothing
    landed. Assumes no source value is that infinity."""
    modes = {"sum": "add", "prod": "mul", "amin": "min", "amax": "max"}
    if reduce not in modes or (not include_self and reduce not in ("amin", "amax")):
        raise torch.onnx.errors.OnnxExporterError(f"scatter_reduce {reduce!r} (include_self={include_self}) "
                                                  "has no ONNX form here")
    if include_self:
        return g.op("ScatterElements", self, index, src, axis_i=dim, reduction_s=modes[reduce])
    fill = float("-inf") if reduce == "amax" else float("inf")
    start = g.op("ConstantOfShape", g.op("Shape", self), value_t=torch.tensor([fill]))
    out = g.op("ScatterElements", start, index, src, axis_i=dim, reduction_s=modes[reduce])
    untouched = g.op("IsInf", out, detect_negative_i=int(reduce == "amax"),
                     detect_positive_i=int(reduce == "amin"))
    return g.op("Where", untouched, self, out)


@symbolic_helper.parse_args("v", "i", "v", "v", "v")
def _index_add(g, self, dim, index, source, alpha=None):
    """``index_add`` with repeated indices (the per-port network's mean pooling): ScatterElements with
    ``add`` on the index broadcast to the source's shape (the stock symbolic drops repeats)."""
    if alpha is not None and symbolic_helper._maybe_get_const(alpha, "f") not in (1, 1.0, None):
        raise torch.onnx.errors.OnnxExporterError("index_add with alpha != 1 has no ONNX form here")
    rank = symbolic_helper._get_tensor_rank(source)
    axes = [axis for axis in range(rank) if axis != dim]
    index = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor(axes, dtype=torch.int64)))
    index = g.op("Expand", index, g.op("Shape", source))
    return g.op("ScatterElements", self, index, source, axis_i=dim, reduction_s="add")


_SYMBOLICS = {"aten::scatter_reduce": _scatter_reduce, "aten::index_add": _index_add}


@contextlib.contextmanager
def _symbolics():
    for name, function in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, function, OPSET)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, OPSET)


def write_onnx(module: nn.Module, example: np.ndarray, num_ports: int, path: str | Path) -> Path:
    """Export ``module`` (flat observations -> actions) to ``path``, traced on ``example`` (B, D):
    input ``observation`` (batch, D) float32, output ``action`` (batch, num_ports) (declared so in
    the file, even where the graph computes it), opset ``OPSET``; checked by onnx."""
    import onnx

    path = Path(path)
    module = module.eval()
    example = torch.as_tensor(np.asarray(example, dtype=np.float32))
    with torch.no_grad(), _symbolics(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    dims[1].Clear()
    dims[1].dim_value = int(num_ports)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
