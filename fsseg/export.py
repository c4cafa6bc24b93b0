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
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fsseg.models.fsdino import FSDINO

# torch and the models are imported inside the functions: `fsseg export --help` answers at once.

SMALL_MODEL = dict(variant="full", backbone="dinov2_tiny", image_size=112, decoder_dim=32,
                   decoder_mlp_dim=64, decoder_heads=2)
ONNX_NAME = "fsseg_segmenter.onnx"


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Description kept as written, defaults shown."""
BUNDLE_NAME = "fsseg_bundle.ckpt"


def _encoded_segmenter_class():
    from torch import nn

    from fsseg.models.fsdino import SupportEncoding

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

    return EncodedSegmenter


def __getattr__(name: str):
    # `from fsseg.export import EncodedSegmenter` builds the class (and imports torch) only then
    if name == "EncodedSegmenter":
        cls = _encoded_segmenter_class()
        globals()["EncodedSegmenter"] = cls
        return cls
    raise AttributeError(name)


def trained_state_dict(model: FSDINO) -> dict[str, torch.Tensor]:
    """``FSDINO`` state dict without the frozen parts (encoder; adapter when frozen)."""
    frozen = ("encoder.",) + (("adapter.",) if model.freeze_adapter else ())
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(frozen)}


def load_module(ckpt_path: Optional[str], small: bool, dinov2_checkpoint: Optional[str] = None):
    """The trained module of ``ckpt_path``, rebuilt on this machine (``fsseg.modules.checkpoints``:
    the frozen DINOv2 file given now, or found by name/sha256; no SAM or adapter file needed)."""
    from fsseg.modules import FewShotModule

    if ckpt_path:
        overrides = {"dinov2_checkpoint": dinov2_checkpoint} if dinov2_checkpoint else {}
        return FewShotModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True, **overrides).eval()
    import torch

    if not small:
        raise ValueError("fsseg export: give --ckpt_path (a trained checkpoint), or --small for the built-in small "
                         "(untrained) model")
    torch.manual_seed(0)
    return FewShotModule(**SMALL_MODEL).eval()


def inference_device(name: str = "auto"):
    """``auto``: the first visible CUDA GPU, else the CPU; ``cpu``, ``cuda``, ``cuda:N``: that device,
    with a one-line error (naming ``--device``) when it is not there."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"--device {name}: {count} CUDA GPU(s) visible on this machine; use --device cpu "
                             "or auto")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"--device {name!r}: fsseg runs on cpu or cuda")
    return device


def place_module(module, device, precision: str = "32"):
    """``module`` (a ``FewShotModule``) moved to ``device``, then its precision applied for that device
    (``fsseg.precision``: 16-mixed is a GPU precision, so the weights move first)."""
    module.to(device)
    module.model.set_precision(precision, device)
    return module


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


def export(ckpt_path: Optional[str], support_dir: str, output_dir: str, image_size: Optional[int] = None,
           opset: int = 18, small: bool = False, shots: Optional[int] = None, query: Optional[str] = None,
           mask_encoding: str = "auto", bundle: bool = False, dinov2_checkpoint: Optional[str] = None) -> dict:
    """Do the export (see the module docstring); returns the ``export.json`` record."""
    import torch
    from safetensors.torch import save_file

    from data_modules import SupportQueryFolderDataModule
    from fsseg.modules.checkpoints import write_bundle

    t0 = time.time()
    module = load_module(ckpt_path, small, dinov2_checkpoint)
    out = Path(output_dir)
    bundle_path = write_bundle(module, out / BUNDLE_NAME, ckpt_path) if bundle else None
    size = int(image_size or module.hparams.image_size)
    if size != module.hparams.image_size:
        print(f"note: model trained at {module.hparams.image_size}, exporting at {size}")
    out.mkdir(parents=True, exist_ok=True)
    dm = SupportQueryFolderDataModule(support_dir, query or support_dir, image_size=size,
                                      mask_encoding=mask_encoding, shots=shots)
    sb = dm.support_batch()
    module.hparams.image_size = size  # supports/queries resized to the export size
    with torch.no_grad():
        encodings = module.set_support_set(sb["support"], sb["support_masks"], sb["class_names"])
    wrapper = __getattr__("EncodedSegmenter")(module.model, encodings).eval()
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
        "checkpoint": ckpt_path, "bundle": str(bundle_path) if bundle_path else None,
        "seconds": round(time.time() - t0, 2),
    }
    (out / "export.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg export", description=__doc__.split("\n\n")[0],
                                formatter_class=RawDescriptionDefaultsHelpFormatter)
    p.add_argument("--ckpt_path", help="FewShotModule checkpoint (.ckpt) of `fsseg fit`")
    p.add_argument("--dinov2_checkpoint", default=None,
                   help="the frozen DINOv2 file, when it is not found by name (next to the checkpoint, ~/.cache/fsseg)")
    p.add_argument("--bundle", action="store_true",
                   help=f"also write {BUNDLE_NAME}: one checkpoint with everything, the frozen encoder included "
                        "(fsseg predict/test/demo-ui --ckpt_path it on a machine without any weight file)")
    p.add_argument("--small", action="store_true", help="no checkpoint: the small built-in model (untrained)")
    p.add_argument("--support_dir", required=True, help="support folder (layouts of SupportQueryFolderDataModule)")
    p.add_argument("--output_dir", default="export", help="folder for the exported files")
    p.add_argument("--image_size", type=int, default=None, help="default: the model's image_size")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--shots", type=int, default=None, help="K supports per class (default: all, same K per class)")
    p.add_argument("--mask_encoding", default="auto", help="support masks: auto|index|binary255|binary01|rgb|jpeg")
    p.add_argument("--query", default=None, help="an image (or folder) used as the parity-check input")
    p.add_argument("--max_diff", type=float, default=1e-3, help="fail when onnxruntime differs more (logits)")
    p.add_argument("--precision", default="32",
                   help="32 | auto (as in `fsseg fit`, fsseg.precision, resolved for onnxruntime's CPU provider, "
                        "which runs fp32 graphs only: auto = 32 here; bf16-mixed / 16-mixed are refused)")
    a = p.parse_args(argv)
    from fsseg.precision import normalize_precision

    try:  # onnxruntime's CPU provider has no bf16/fp16 Conv or MatMul kernels: a bf16 graph fails to load
        if normalize_precision(a.precision) not in ("32", "auto"):
            p.error(f"precision {a.precision}: onnxruntime's CPU provider has no bfloat16/float16 Conv or MatMul "
                    "kernels, so the ONNX graph is exported in fp32; use --precision 32 or auto")
    except ValueError as e:
        p.error(str(e))
    rec = export(a.ckpt_path, a.support_dir, a.output_dir, a.image_size, a.opset, a.small, a.shots, a.query,
                 a.mask_encoding, bundle=a.bundle, dinov2_checkpoint=a.dinov2_checkpoint)
    print(f"ONNX ({rec['exporter']}, opset {rec['opset']}): {rec['onnx']}  classes: {rec['class_names']}")
    print(f"onnxruntime vs PyTorch: max abs diff of logits {rec['onnx_vs_torch_max_abs_diff_logits']:.3g}, "
          f"pred agreement {100 * rec['onnx_vs_torch_pred_agreement']:.2f}% (batch {rec['parity_batch']})")
    print(f"trained weights: {rec['weights']} ({rec['trained_params']} params), hyper-parameters: {rec['hparams']}")
    if rec["bundle"]:
        print(f"bundle (everything, frozen encoder included): {rec['bundle']}")
    if rec["onnx_vs_torch_max_abs_diff_logits"] > a.max_diff:
        raise SystemExit(f"ONNX parity check failed: {rec['onnx_vs_torch_max_abs_diff_logits']} > {a.max_diff}")


if __name__ == "__main__":
    main()
