"""``fsseg export``: a trained segmenter as ONNX (episodic with its support set baked in, or support-free specialised), plus safetensors weights.

    fsseg export --ckpt_path runs/fewshot/.../best.ckpt --support_dir my_support/ --output_dir export/
    fsseg export --ckpt_path runs/specialize/checkpoints/last.ckpt --output_dir export/   # no supports
    fsseg export --small --support_dir my_support/ --output_dir export/      # built-in small model

A ``SpecializeModule`` checkpoint (``fsseg fit --config lightning_configs/specialize_folder.yaml``)
needs no ``--support_dir``: its classes live in the model. Writes into ``output_dir``:

* ``fsseg_segmenter.onnx``: input ``query`` ``float32 [B,3,S,S]`` RGB in [0,1] (not normalised; the
  model normalises inside; S = the model's ``image_size``; B is dynamic when the exporter manages
  it, see ``export.json``); outputs ``logits`` ``[B,N,S,S]`` (per-class foreground logits; background
  logit = 0) and ``pred`` ``int64 [B,S,S]`` (class index, 0 = background, c = class c).
* ``fsseg_image_segmenter.onnx``: the same model with fsseg's preprocessing inside: input ``image``
  ``uint8 [H,W,3]`` RGB of any size (decoded, EXIF orientation applied), resized to S as
  ``cv2.resize(INTER_LINEAR)`` does, bit for bit (its fixed-point arithmetic, ``add_image_io``),
  scaled to [0,1]; outputs ``pred`` ``int64 [H,W]`` (class index at the photo's size, upsampled as
  ``fsseg predict`` does: nearest, ``floor(i * S / H)``), ``mask`` ``uint8 [H,W]`` (the file ``fsseg
  predict`` writes: 0/255 for one class, the class index for several) and ``logits`` ``[1,N,S,S]``.
  ``export.json`` records its measured agreement with the PyTorch predict path (on the ``--query``
  photos, else two random images). ``preprocess_reference.py`` (written next to it) shows the same
  preprocessing in OpenCV around ``fsseg_segmenter.onnx``.
* ``weights.safetensors``: the trained (non-frozen) weights of ``FSDINO`` alone (everything but the
  frozen DINOv2 encoder, and the adapter when it is frozen), keys as in ``FSDINO.state_dict()``.
* ``hparams.json``: the module's hyper-parameters (rebuild with ``FewShotModule(**hparams)``, load the
  safetensors with ``model.load_state_dict(..., strict=False)``).
* ``export.json``: model kind, class names (index c of ``pred`` = ``class_names[c-1]``, 0 =
  background), support files, image size, the preprocessing, opset, exporter, and the measured
  onnxruntime-vs-PyTorch max abs difference of the logits.

For a specialised (support-free) checkpoint the graph is the student
(``SpecializedSegmenter.forward``), ``weights.safetensors`` holds the student without its frozen
encoder/adapter, and ``--bundle`` writes one checkpoint with the teacher's and student's weights
(no teacher file needed to predict).

**Support encodings are baked in as constants** (one ONNX file per support set). Passing them as
inputs would keep one graph for any support set, but a deployment app would then also need the
support encoder (DINOv2 + SVP) to compute them, i.e. a second model and the encoding logic in the
app; a baked-in file is self-contained (image in, mask out) and re-exporting for a new support set
takes seconds. The exported graph is ``FSDINO.segment_multiclass_encoded`` with the encodings fixed.
"""

from __future__ import annotations

import argparse
from typing import Optional

from fsseg.export.pipeline import BUNDLE_NAME, IMAGE_ONNX_NAME, export

__all__ = ["export", "main"]


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Description kept as written, defaults shown."""


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg export", description=__doc__.split("\n\n")[0],
                                formatter_class=RawDescriptionDefaultsHelpFormatter)
    p.add_argument("--ckpt_path", help="checkpoint (.ckpt) of `fsseg fit`: episodic FewShotModule (needs --support_dir) "
                                       "or support-free SpecializeModule")
    p.add_argument("--dinov2_checkpoint", default=None,
                   help="the frozen DINOv2 file, when it is not found by name (next to the checkpoint, ~/.cache/fsseg)")
    p.add_argument("--bundle", action="store_true",
                   help=f"also write {BUNDLE_NAME}: one checkpoint with everything, the frozen encoder included "
                        "(fsseg predict/test/demo-ui --ckpt_path it on a machine without any weight file)")
    p.add_argument("--small", action="store_true", help="no checkpoint: the small built-in model (untrained)")
    p.add_argument("--support_dir", default=None,
                   help="episodic checkpoints (and --small): the support folder baked into the graph (layouts of "
                        "SupportQueryFolderDataModule); not used for a specialised checkpoint")
    p.add_argument("--output_dir", default="export", help="folder for the exported files")
    p.add_argument("--image_size", type=int, default=None, help="default: the model's image_size")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--shots", type=int, default=None, help="K supports per class (default: all, same K per class)")
    p.add_argument("--mask_encoding", default="auto", help="support masks: auto|index|binary255|binary01|rgb|jpeg")
    p.add_argument("--query", default=None, help="an image (or folder) used as the parity-check input (the "
                                                  f"{IMAGE_ONNX_NAME} check runs on each photo at its own size)")
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
    ip = rec["image_onnx_vs_predict"]
    print(f"{rec['image_onnx']} (uint8 photo of any size in): masks equal to fsseg predict's on "
          f"{100 * ip['pixel_agreement']:.3f}% of pixels ({ip['photos']} photo(s), worst "
          f"{100 * ip['worst_photo_agreement']:.3f}%); exact preprocessing: {rec['reference_preprocessing']}")
    print(f"trained weights: {rec['weights']} ({rec['trained_params']} params), hyper-parameters: {rec['hparams']}")
    if rec["bundle"]:
        print(f"bundle (everything, frozen encoder included): {rec['bundle']}")
    if rec["onnx_vs_torch_max_abs_diff_logits"] > a.max_diff:
        raise SystemExit(f"ONNX parity check failed: {rec['onnx_vs_torch_max_abs_diff_logits']} > {a.max_diff}")
