"""The ONNX graph of a wrapper (``fsseg.export.wrappers``): exported, its batch dimension read, run in
onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


def onnx_export(wrapper: nn.Module, query: torch.Tensor, path: Path, opset: int) -> str:
    """TorchDynamo exporter first (batch dimension dynamic), the TorchScript one as a fallback."""
    import torch

    errors = []
    try:
        batch = torch.export.Dim("batch", min=1, max=64)
        prog = torch.onnx.export(wrapper, (query,), dynamo=True, opset_version=opset,
                                 input_names=["query"], output_names=["logits", "pred"],
                                 dynamic_shapes=({0: batch},), verbose=False)
        prog.save(str(path))
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - fall back to the legacy exporter, report both on failure
        errors.append(f"dynamo: {type(e).__name__}: {e}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (query,), str(path), dynamo=False, opset_version=opset,
                              input_names=["query"], output_names=["logits", "pred"],
                              dynamic_axes={"query": {0: "batch"}, "logits": {0: "batch"}, "pred": {0: "batch"}})
        return "torchscript"
    except Exception as e:  # noqa: BLE001
        errors.append(f"torchscript: {type(e).__name__}: {e}")
    raise RuntimeError("ONNX export failed:\n" + "\n".join(errors))


def onnx_batch_dim(path: Path) -> str:
    """``"dynamic"`` or the fixed batch size of the ONNX model's ``query`` input."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    d = m.graph.input[0].type.tensor_type.shape.dim[0]
    return str(d.dim_value) if d.HasField("dim_value") else "dynamic"


def run_onnx(path: Path, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, pred = sess.run(["logits", "pred"], {"query": query.astype(np.float32)})
    return logits, pred
