"""``fsseg export``: the trained segmenter for a fixed support set as ONNX, plus safetensors weights.

    fsseg export --ckpt_path runs/.../best.ckpt --support_dir my_support/ --output_dir export/
    fsseg export --small --support_dir my_support/ --output_dir export/      # built-in small model

Writes into ``output_dir``:

* ``fsseg_segmenter.onnx``: input ``query`` ``float32 [B,3,S,S]`` RGB in [0,1] (not normalised; the
  model normalises inside; S = the model's ``image_size``; B is dynamic when the exporter manages
  it, see ``export.json``); outputs ``logits`` ``[B,N,S,S]`` (per-class foreground logits; background
  logit = 0) and ``pred`` ``int64 [B,S,S]`` (class index, 0 = background, c = class c).
* ``weights.safetensors``: the trained (non-frozen) weights of ``FSDINO`` alone (everything but the
  frozen DINOv2 encoder, and the adapter when it is frozen), keys as in ``FSDINO.state_dict()``.
* ``hparams.json``: the module's hyper-parameters (rebuild with ``FewShotModule(**hparams)``, load the
  safetensors with ``model.load_state_dict(..., strict=False)``).
* ``export.json``: class names, support files, image size, opset, exporter, and the measured
  onnxruntime-vs-PyTorch max abs difference of the logits.

**Support encodings are baked in as constants** (one ONNX file per support set). Passing them as
inputs would keep one graph for any support set, but a deployment app would then also need the
support encoder (DINOv2 + SVP) to compute them, i.e. a second model and the encoding logic in the
app; a baked-in file is self-contained (image in, mask out) and re-exporting for a new support set
takes seconds. The exported graph is ``FSDINO.segment_multiclass_encoded`` with the encodings fixed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from fsseg.models.fsdino import FSDINO, SupportEncoding

SMALL_MODEL = dict(variant="full", backbone="dinov2_tiny", image_size=112, decoder_dim=32,
                   decoder_mlp_dim=64, decoder_heads=2)
ONNX_NAME = "fsseg_segmenter.onnx"


class EncodedSegmenter(nn.Module):
    """``query [B,3,S,S] -> (logits [B,N,S,S], pred [B,S,S])`` with the support encodings as buffers."""

    def __init__(self, model: FSDINO, encodings: list[SupportEncoding]) -> None:
        super().__init__()
        self.model = model
        self.n = len(encodings)
        fields = ("semantic", "masks", "shot_prototypes", "prototype", "sparse")
        for c, enc in enumerate(encodings):
            for f in fields:
                self.register_buffer(f"enc{c}_{f}", getattr(enc, f).detach().clone(), persistent=False)

    def encodings(self) -> list[SupportEncoding]:
        return [SupportEncoding(*(getattr(self, f"enc{c}_{f}") for f in
                                  ("semantic", "masks", "shot_prototypes", "prototype", "sparse")))
                for c in range(self.n)]

    def forward(self, query: torch.Tensor):
        out = self.model.segment_multiclass_encoded(query, self.encodings())
        return out["logits"], out["pred"]


def trained_state_dict(model: FSDINO) -> dict[str, torch.Tensor]:
    """``FSDINO`` state dict without the frozen parts (encoder; adapter when frozen)."""
    frozen = ("encoder.",) + (("adapter.",) if model.freeze_adapter else ())
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(frozen)}


def load_module(ckpt_path: Optional[str], small: bool):
    from fsseg.modules import FewShotModule

    if ckpt_path:
        return FewShotModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True).eval()
    if not small:
        raise SystemExit("fsseg export: give --ckpt_path, or --small for the built-in small (untrained) model")
    torch.manual_seed(0)
    return FewShotModule(**SMALL_MODEL).eval()


def onnx_export(wrapper: nn.Module, query: torch.Tensor, path: Path, opset: int) -> str:
    """TorchDynamo exporter first (batch dimension dynamic), the TorchScript one as a fallback."""
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


def export(ckpt_path: Optional[str], support_dir: str, output_dir: str, image_size: Optional[int] = None,
           opset: int = 18, small: bool = False, shots: Optional[int] = None, query: Optional[str] = None,
           mask_encoding: str = "auto") -> dict:
    """Do the export (see the module docstring); returns the ``export.json`` record."""
    from safetensors.torch import save_file

    from data_modules import SupportQueryFolderDataModule

    t0 = time.time()
    module = load_module(ckpt_path, small)
    size = int(image_size or module.hparams.image_size)
    if size != module.hparams.image_size:
        print(f"note: model trained at {module.hparams.image_size}, exporting at {size}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = SupportQueryFolderDataModule(support_dir, query or support_dir, image_size=size,
                                      mask_encoding=mask_encoding, shots=shots)
    sb = dm.support_batch()
    module.hparams.image_size = size  # supports/queries resized to the export size
    with torch.no_grad():
        encodings = module.set_support_set(sb["support"], sb["support_masks"], sb["class_names"])
    wrapper = EncodedSegmenter(module.model, encodings).eval()
    if query:  # a real photo as the parity input
        q = next(iter(dm.predict_dataloader()))["query"][:1]
    else:
        q = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    q2 = torch.cat([q, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        ref_logits, ref_pred = wrapper(q2)
    onnx_path = out / ONNX_NAME
    exporter = onnx_export(wrapper, q2, onnx_path, opset)
    batch_dim = onnx_batch_dim(onnx_path)
    if batch_dim != "dynamic":  # the exporter fixed the batch: check parity at that batch
        q2 = q2[:int(batch_dim)]
        ref_logits, ref_pred = ref_logits[:int(batch_dim)], ref_pred[:int(batch_dim)]
    ort_logits, ort_pred = run_onnx(onnx_path, q2.numpy())
    diff = float(np.abs(ort_logits - ref_logits.numpy()).max())
    pred_agree = float((ort_pred == ref_pred.numpy()).mean())

    weights = trained_state_dict(module.model)
    save_file(weights, str(out / "weights.safetensors"))
    hparams = {k: v for k, v in dict(module.hparams).items()}
    (out / "hparams.json").write_text(json.dumps(hparams, indent=2, default=str))
    record = {
        "onnx": str(onnx_path), "weights": str(out / "weights.safetensors"), "hparams": str(out / "hparams.json"),
        "exporter": exporter, "opset": opset, "image_size": size, "class_names": sb["class_names"],
        "support_names": sb["support_names"], "supports": "baked-in constants",
        "batch": batch_dim, "inputs": {"query": ["batch", 3, size, size]},
        "outputs": {"logits": ["batch", len(sb["class_names"]), size, size], "pred": ["batch", size, size]},
        "onnx_vs_torch_max_abs_diff_logits": diff, "onnx_vs_torch_pred_agreement": pred_agree,
        "parity_batch": int(q2.shape[0]), "trained_tensors": len(weights),
        "trained_params": int(sum(v.numel() for v in weights.values())),
        "checkpoint": ckpt_path, "seconds": round(time.time() - t0, 2),
    }
    (out / "export.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", help="FewShotModule checkpoint (.ckpt)")
    p.add_argument("--small", action="store_true", help="no checkpoint: the small built-in model (untrained)")
    p.add_argument("--support_dir", required=True, help="support folder (layouts of SupportQueryFolderDataModule)")
    p.add_argument("--output_dir", default="export")
    p.add_argument("--image_size", type=int, default=None, help="default: the model's image_size")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--shots", type=int, default=None, help="K supports per class (default: all, same K per class)")
    p.add_argument("--mask_encoding", default="auto")
    p.add_argument("--query", default=None, help="an image (or folder) used as the parity-check input")
    p.add_argument("--max_diff", type=float, default=1e-3, help="fail when onnxruntime differs more (logits)")
    a = p.parse_args(argv)
    rec = export(a.ckpt_path, a.support_dir, a.output_dir, a.image_size, a.opset, a.small, a.shots, a.query,
                 a.mask_encoding)
    print(f"ONNX ({rec['exporter']}, opset {rec['opset']}): {rec['onnx']}  classes: {rec['class_names']}")
    print(f"onnxruntime vs PyTorch: max abs diff of logits {rec['onnx_vs_torch_max_abs_diff_logits']:.3g}, "
          f"pred agreement {100 * rec['onnx_vs_torch_pred_agreement']:.2f}% (batch {rec['parity_batch']})")
    print(f"trained weights: {rec['weights']} ({rec['trained_params']} params), hyper-parameters: {rec['hparams']}")
    if rec["onnx_vs_torch_max_abs_diff_logits"] > a.max_diff:
        raise SystemExit(f"ONNX parity check failed: {rec['onnx_vs_torch_max_abs_diff_logits']} > {a.max_diff}")


if __name__ == "__main__":
    main()
