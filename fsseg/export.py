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

SMALL_MODEL = dict(segmenter={"name": "tiny", "method": "full"}, image_size=112)  # fsseg.models.methods.tiny
ONNX_NAME = "fsseg_segmenter.onnx"
IMAGE_ONNX_NAME = "fsseg_image_segmenter.onnx"
REFERENCE_SCRIPT_NAME = "preprocess_reference.py"


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
    """The trained module of ``ckpt_path`` (a ``FewShotModule`` or a ``SpecializeModule``), rebuilt on
    this machine (``fsseg.modules.checkpoints``: the frozen DINOv2 file given now, or found by
    name/sha256; no SAM or adapter file needed)."""
    from fsseg.modules import FewShotModule, SpecializeModule

    if ckpt_path:
        from fsseg.modules.checkpoints import load_module_from_checkpoint

        overrides = {"dinov2_checkpoint": dinov2_checkpoint} if dinov2_checkpoint else {}
        module = load_module_from_checkpoint(ckpt_path, overrides=overrides, map_location="cpu")
        if not isinstance(module, (FewShotModule, SpecializeModule)):
            raise ValueError(f"{ckpt_path}: a {type(module).__name__} checkpoint; fsseg export takes a FewShotModule "
                             "(episodic, with --support_dir) or a SpecializeModule (support-free) checkpoint")
        if isinstance(module, SpecializeModule) and module.student is None:
            raise ValueError(f"{ckpt_path}: a SpecializeModule checkpoint without a specialised student (no class "
                             "names saved); export the last.ckpt of a finished `fsseg fit` specialisation")
        return module.eval()
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


def _student_segmenter_class():
    from torch import nn

    class StudentSegmenter(nn.Module):
        """``query [B,3,S,S] -> (logits [B,N,S,S], pred [B,S,S])`` of the support-free specialised model
        (the same outputs as ``EncodedSegmenter``: per-class foreground logits, background logit 0)."""

        def __init__(self, student) -> None:
            super().__init__()
            self.student = student

        def forward(self, query: torch.Tensor):
            out = self.student(query)
            return out["logits"][:, 1:], out["pred"]

    return StudentSegmenter


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


def _cv2_linear_axis(nodes: list, n: str, size: int, axis: str, clamp: bool) -> None:
    """Nodes computing OpenCV's INTER_LINEAR taps along one axis of length ``n`` (a scalar int64
    tensor) resized to ``size``: ``{axis}_i0``, ``{axis}_i1`` (int64 [size]) and the fixed-point weights
    ``{axis}_w0``, ``{axis}_w1`` (int32 [size], summing to 2048). As opencv modules/imgproc/src/resize.cpp
    ``resizeGeneric``'s set-up: ``scale = 1 / (size / n)`` in double, ``f = float((d + 0.5) * scale - 0.5)``,
    ``s = floor(f)``, weights ``saturate_cast<short>((1 - (f - s)) * 2048)``; columns (``clamp``) are moved
    inside the image with weight 0 on the outer tap, rows are not (their indices are clipped when read)."""
    from onnx import TensorProto, helper

    a = axis
    nodes += [
        helper.make_node("Cast", [n], [f"{a}_nd"], to=TensorProto.DOUBLE),
        helper.make_node("Div", ["c_size_d", f"{a}_nd"], [f"{a}_inv"]),
        helper.make_node("Div", ["c_one_d", f"{a}_inv"], [f"{a}_scale"]),
        helper.make_node("Mul", ["c_dst_half", f"{a}_scale"], [f"{a}_src_d"]),
        helper.make_node("Sub", [f"{a}_src_d", "c_half_d"], [f"{a}_src_d2"]),
        helper.make_node("Cast", [f"{a}_src_d2"], [f"{a}_f"], to=TensorProto.FLOAT),
        helper.make_node("Floor", [f"{a}_f"], [f"{a}_fl"]),
        helper.make_node("Sub", [f"{a}_f", f"{a}_fl"], [f"{a}_frac0"]),
        helper.make_node("Cast", [f"{a}_fl"], [f"{a}_s0"], to=TensorProto.INT64),
        helper.make_node("Sub", [n, "c_i1"], [f"{a}_last"]),
    ]
    frac, s = f"{a}_frac0", f"{a}_s0"
    if clamp:
        nodes += [
            helper.make_node("Less", [s, "c_i0"], [f"{a}_lo"]),
            helper.make_node("Where", [f"{a}_lo", "c_zero", frac], [f"{a}_frac1"]),
            helper.make_node("Where", [f"{a}_lo", "c_i0", s], [f"{a}_s1"]),
            helper.make_node("GreaterOrEqual", [f"{a}_s1", f"{a}_last"], [f"{a}_hi"]),
            helper.make_node("Where", [f"{a}_hi", "c_zero", f"{a}_frac1"], [f"{a}_frac2"]),
            helper.make_node("Where", [f"{a}_hi", f"{a}_last", f"{a}_s1"], [f"{a}_s2"]),
        ]
        frac, s = f"{a}_frac2", f"{a}_s2"
    nodes += [
        helper.make_node("Sub", ["c_one_f", frac], [f"{a}_w0f"]),
        helper.make_node("Mul", [f"{a}_w0f", "c_2048_f"], [f"{a}_w0s"]),
        helper.make_node("Round", [f"{a}_w0s"], [f"{a}_w0r"]),
        helper.make_node("Cast", [f"{a}_w0r"], [f"{a}_w0"], to=TensorProto.INT32),
        helper.make_node("Sub", ["c_2048_i", f"{a}_w0"], [f"{a}_w1"]),
        helper.make_node("Add", [s, "c_i1"], [f"{a}_s_next"]),
        helper.make_node("Clip", [s, "c_i0", f"{a}_last"], [f"{a}_i0"]),
        helper.make_node("Clip", [f"{a}_s_next", "c_i0", f"{a}_last"], [f"{a}_i1"]),
    ]


def add_image_io(model_path: Path, out_path: Path, size: int, num_classes: int, single_class_value: int = 255) -> None:
    """Write ``out_path``: the graph of ``model_path`` (input ``query [B,3,S,S]`` in [0,1]) with fsseg's
    preprocessing in front and the mask upsampling behind (see the module docstring).

    In front, ``data_modules.transforms.resize_image`` (``cv2.resize`` INTER_LINEAR on uint8) computed
    the way OpenCV computes it: 11-bit fixed-point taps (``_cv2_linear_axis``), the horizontal pass
    summed in int32, the vertical pass as its SIMD kernel (resize.cpp ``VResizeLinearVec_32s8u``:
    ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2``, saturated to 0..255), then
    ``image_to_tensor`` (float32 / 255). Behind, as ``callbacks.prediction_writer`` (``F.interpolate``
    mode ``nearest`` on the CPU: source index ``min(floor(i * float32(S / H)), S - 1)``, aten
    UpSample.h ``nearest_idx``), built from Range/Mul/Floor/Gather so it is the same float32 product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(model_path))
    g = m.graph
    # the model's own pred (at model size) becomes an internal tensor; `pred` names the full-size one
    for node in g.node:
        node.output[:] = ["pred_model_size" if o == "pred" else o for o in node.output]
        node.input[:] = ["pred_model_size" if i == "pred" else i for i in node.input]
    for vi in list(g.value_info):
        if vi.name in ("pred", "query"):
            g.value_info.remove(vi)
    for i in [i for i in g.input if i.name == "query"]:
        g.input.remove(i)
    consts = {
        "c_axes0": np.array([0], np.int64), "c_zero": np.array(0.0, np.float32),
        "c_255": np.array(255.0, np.float32), "c_one_f": np.array(1.0, np.float32),
        "c_2048_f": np.array(2048.0, np.float32), "c_2048_i": np.array(2048, np.int32),
        "c_size_d": np.array(float(size), np.float64), "c_one_d": np.array(1.0, np.float64),
        "c_half_d": np.array(0.5, np.float64), "c_dst_half": np.arange(size, dtype=np.float64) + 0.5,
        "c_i0": np.array(0, np.int64), "c_i1": np.array(1, np.int64), "c_size_f": np.array(float(size), np.float32),
        "c_last": np.array(size - 1, np.int64),
        "c_shape_x": np.array([1, size, 1], np.int64), "c_shape_y": np.array([size, 1, 1], np.int64),
        "c_16": np.array(16, np.int32), "c_65536": np.array(65536, np.int32), "c_2": np.array(2, np.int32),
        "c_4": np.array(4, np.int32), "c_0_i": np.array(0, np.int32), "c_255_i": np.array(255, np.int32),
    }
    if num_classes == 1:
        consts["c_fg"] = np.array(single_class_value, np.uint8)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    pre = [helper.make_node("Shape", ["image"], ["img_shape"]),
           helper.make_node("Gather", ["img_shape", "c_i0"], ["n_y"], axis=0),
           helper.make_node("Gather", ["img_shape", "c_i1"], ["n_x"], axis=0)]
    _cv2_linear_axis(pre, "n_x", size, "x", clamp=True)
    _cv2_linear_axis(pre, "n_y", size, "y", clamp=False)
    pre += [
        helper.make_node("Cast", ["image"], ["img_i"], to=TensorProto.INT32),
        helper.make_node("Gather", ["img_i", "x_i0"], ["col0"], axis=1),
        helper.make_node("Gather", ["img_i", "x_i1"], ["col1"], axis=1),
        helper.make_node("Reshape", ["x_w0", "c_shape_x"], ["x_w0_b"]),
        helper.make_node("Reshape", ["x_w1", "c_shape_x"], ["x_w1_b"]),
        helper.make_node("Mul", ["col0", "x_w0_b"], ["hcol0"]),
        helper.make_node("Mul", ["col1", "x_w1_b"], ["hcol1"]),
        helper.make_node("Add", ["hcol0", "hcol1"], ["hrow"]),  # [H,S,3], 11-bit fixed point
        helper.make_node("Gather", ["hrow", "y_i0"], ["row0"], axis=0),
        helper.make_node("Gather", ["hrow", "y_i1"], ["row1"], axis=0),
        helper.make_node("Reshape", ["y_w0", "c_shape_y"], ["y_w0_b"]),
        helper.make_node("Reshape", ["y_w1", "c_shape_y"], ["y_w1_b"]),
    ]
    for k in ("0", "1"):
        pre += [helper.make_node("Div", [f"row{k}", "c_16"], [f"row{k}_s"]),
                helper.make_node("Mul", [f"row{k}_s", f"y_w{k}_b"], [f"row{k}_m"]),
                helper.make_node("Div", [f"row{k}_m", "c_65536"], [f"row{k}_h"])]
    pre += [
        helper.make_node("Add", ["row0_h", "row1_h"], ["vsum"]),
        helper.make_node("Add", ["vsum", "c_2"], ["vsum2"]),
        helper.make_node("Div", ["vsum2", "c_4"], ["vres"]),
        helper.make_node("Clip", ["vres", "c_0_i", "c_255_i"], ["img_resized"]),  # [S,S,3] uint8 values
        helper.make_node("Cast", ["img_resized"], ["img_rf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["img_rf", "c_255"], ["img_unit"]),
        helper.make_node("Transpose", ["img_unit"], ["img_chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["img_chw", "c_axes0"], ["query"]),
    ]
    post = []
    for name in ("y", "x"):
        post += [
            helper.make_node("Range", ["c_i0", f"n_{name}", "c_i1"], [f"r_{name}"]),
            helper.make_node("Cast", [f"r_{name}"], [f"rf_{name}"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [f"n_{name}"], [f"nf_{name}"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["c_size_f", f"nf_{name}"], [f"up_scale_{name}"]),
            helper.make_node("Mul", [f"rf_{name}", f"up_scale_{name}"], [f"up_src_{name}"]),
            helper.make_node("Floor", [f"up_src_{name}"], [f"up_fl_{name}"]),
            helper.make_node("Cast", [f"up_fl_{name}"], [f"up_fi_{name}"], to=TensorProto.INT64),
            helper.make_node("Min", [f"up_fi_{name}", "c_last"], [f"up_idx_{name}"]),
        ]
    post += [
        helper.make_node("Gather", ["pred_model_size", "c_i0"], ["pred_0"], axis=0),
        helper.make_node("Gather", ["pred_0", "up_idx_y"], ["pred_rows"], axis=0),
        helper.make_node("Gather", ["pred_rows", "up_idx_x"], ["pred"], axis=1),
        helper.make_node("Cast", ["pred"], ["pred_u8"], to=TensorProto.UINT8),
    ]
    post.append(helper.make_node("Mul", ["pred_u8", "c_fg"], ["mask"]) if num_classes == 1
                else helper.make_node("Identity", ["pred_u8"], ["mask"]))
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    g.input.insert(0, helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3]))
    logits = [o for o in g.output if o.name == "logits"]
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("pred", TensorProto.INT64, ["height", "width"]),
                     helper.make_tensor_value_info("mask", TensorProto.UINT8, ["height", "width"])] + logits)
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))


REFERENCE_SCRIPT = '''"""fsseg's exact preprocessing around {onnx}: photo files -> mask files equal to `fsseg predict`'s.

    python preprocess_reference.py photo.jpg [more.jpg ...] --out masks/

Needs numpy, pillow, opencv-python and onnxruntime. The photo is read as fsseg reads it (EXIF
orientation applied, RGB), resized with OpenCV's INTER_LINEAR to {size}x{size} and scaled to [0,1]
(fsseg: data_modules/transforms.py resize_image, image_to_tensor), segmented, and the class index is
upsampled to the photo's size as torch's nearest interpolation does (callbacks/prediction_writer.py).
16-bit photos: fsseg scales them to 0..255 first (data_modules/image_io.py high_bit_depth_to_uint8).
Classes (mask value c = CLASS_NAMES[c - 1], 0 = background; one class: 0 / {fg}): {names}
"""
import argparse
import os

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

IMAGE_SIZE = {size}
CLASS_NAMES = {names!r}
SINGLE_CLASS_VALUE = {fg}
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{onnx}")


def read_rgb(path):
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def preprocess(rgb):
    x = cv2.resize(rgb, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    return (x.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]


def nearest_index(n, s):
    if n == s:
        return np.arange(n)
    scale = np.float32(s) / np.float32(n)
    return np.minimum(np.floor(np.arange(n).astype(np.float32) * scale).astype(np.int64), s - 1)


def segment(session, rgb):
    _, pred = session.run(["logits", "pred"], {{"query": preprocess(rgb)}})
    h, w = rgb.shape[:2]
    full = pred[0][nearest_index(h, IMAGE_SIZE)][:, nearest_index(w, IMAGE_SIZE)].astype(np.uint8)
    return full * np.uint8(SINGLE_CLASS_VALUE) if len(CLASS_NAMES) == 1 else full


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\\n\\n")[0])
    p.add_argument("photos", nargs="+")
    p.add_argument("--out", default="masks")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    for path in a.photos:
        out = os.path.join(a.out, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(segment(session, read_rgb(path)), mode="L").save(out)
        print(out)


if __name__ == "__main__":
    main()
'''


def torch_photo_prediction(wrapper, rgb: np.ndarray, size: int) -> np.ndarray:
    """The class index ``fsseg predict`` writes for an RGB uint8 photo (``_QueryFolder`` reads it at
    ``size`` with ``resize_image``/``image_to_tensor``; ``PredictionWriter`` upsamples nearest)."""
    import torch

    from data_modules.transforms import image_to_tensor, resize_image

    with torch.no_grad():
        _, pred = wrapper(image_to_tensor(resize_image(rgb, size))[None])
    h, w = rgb.shape[:2]
    full = torch.nn.functional.interpolate(pred[:1, None].float(), size=(h, w), mode="nearest")[0, 0]
    return full.round().long().numpy()


def image_graph_parity(path: Path, wrapper, photos: list, size: int) -> dict:
    """``fsseg_image_segmenter.onnx`` on uint8 photos of their own size vs the PyTorch predict path:
    the fraction of equal mask pixels (overall and the worst photo)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    equal = total = 0
    worst = 1.0
    for rgb in photos:
        (ort_pred,) = sess.run(["pred"], {"image": np.ascontiguousarray(rgb, dtype=np.uint8)})
        ref = torch_photo_prediction(wrapper, rgb, size)
        same = int((ort_pred == ref).sum())
        equal, total = equal + same, total + ref.size
        worst = min(worst, same / ref.size)
    return {"photos": len(photos), "pixel_agreement": equal / max(total, 1), "worst_photo_agreement": worst}


def _photos(query: Optional[str], limit: int = 64) -> list:
    """RGB uint8 arrays of ``query`` (an image or a folder, read as fsseg reads photos); without it two
    random images of odd sizes."""
    if not query:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), rng.integers(0, 256, (403, 299, 3), dtype=np.uint8)]
    from data_modules.image_io import list_images, read_image

    paths = [query] if Path(query).is_file() else list_images(query, recursive=True, what="query folder")
    return [read_image(p) for p in paths[:limit]]


def _say(t0: float, message: str) -> None:
    import sys

    print(f"fsseg export [{time.time() - t0:5.1f} s] {message}", file=sys.stderr, flush=True)


def export(ckpt_path: Optional[str], support_dir: Optional[str], output_dir: str, image_size: Optional[int] = None,
           opset: int = 18, small: bool = False, shots: Optional[int] = None, query: Optional[str] = None,
           mask_encoding: str = "auto", bundle: bool = False, dinov2_checkpoint: Optional[str] = None) -> dict:
    """Do the export (see the module docstring); returns the ``export.json`` record."""
    import torch
    from safetensors.torch import save_file

    from fsseg.modules import SpecializeModule
    from fsseg.modules.checkpoints import write_bundle

    t0 = time.time()
    _say(t0, f"loading {ckpt_path or 'the built-in small model'}")
    module = load_module(ckpt_path, small, dinov2_checkpoint)
    specialized = isinstance(module, SpecializeModule)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if bundle:
        _say(t0, "writing the bundle (every weight in one checkpoint)")
        bundle_path = write_bundle(module, out / BUNDLE_NAME, ckpt_path,
                                   hparams=module.bundle_hparams() if specialized else None)
    else:
        bundle_path = None
    size = int(image_size or module.hparams.image_size)
    if size != module.hparams.image_size:
        _say(t0, f"note: model trained at {module.hparams.image_size}, exporting at {size}")
    if specialized:
        if support_dir:
            _say(t0, f"note: --support_dir {support_dir} ignored: a specialised model holds its classes")
        wrapper = _student_segmenter_class()(module.student).eval()
        class_names = list(module.student.class_names)
        support_record = {"kind": "specialized (support-free)", "supports": "none (distilled into the model)",
                          "support_names": None}
        weights = {k: v.detach().cpu().contiguous() for k, v in module.student.state_dict().items()
                   if not k.startswith(("encoder.", "adapter."))}
    else:
        if not support_dir:
            raise ValueError(f"{ckpt_path or 'the small model'} is an episodic FewShotModule: give --support_dir (the "
                             "labelled examples baked into the graph); a specialised checkpoint needs none")
        from data_modules import SupportQueryFolderDataModule

        dm = SupportQueryFolderDataModule(support_dir, support_dir, image_size=size, mask_encoding=mask_encoding,
                                          shots=shots)
        sb = dm.support_batch()
        module.hparams.image_size = size  # supports/queries resized to the export size
        _say(t0, f"encoding the support set ({sum(len(n) for n in sb['support_names'])} images)")
        with torch.no_grad():
            encodings = module.set_support_set(sb["support"], sb["support_masks"], sb["class_names"])
        wrapper = __getattr__("EncodedSegmenter")(module.model, encodings).eval()
        class_names = list(sb["class_names"])
        support_record = {"kind": "episodic", "supports": "baked-in constants", "support_names": sb["support_names"]}
        weights = trained_state_dict(module.model)
    photos = _photos(query)
    from data_modules.transforms import image_to_tensor, resize_image

    q = image_to_tensor(resize_image(photos[0], size))[None]  # a real photo (or random) as the parity input
    q2 = torch.cat([q, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        ref_logits, ref_pred = wrapper(q2)
    onnx_path = out / ONNX_NAME
    _say(t0, f"exporting the ONNX graph at {size}x{size} (about a minute)")
    exporter = onnx_export(wrapper, q2, onnx_path, opset)
    batch_dim = onnx_batch_dim(onnx_path)
    if batch_dim != "dynamic":  # the exporter fixed the batch: check parity at that batch
        q2 = q2[:int(batch_dim)]
        ref_logits, ref_pred = ref_logits[:int(batch_dim)], ref_pred[:int(batch_dim)]
    _say(t0, "checking onnxruntime against PyTorch")
    ort_logits, ort_pred = run_onnx(onnx_path, q2.numpy())
    diff = float(np.abs(ort_logits - ref_logits.numpy()).max())
    pred_agree = float((ort_pred == ref_pred.numpy()).mean())

    image_path = out / IMAGE_ONNX_NAME
    single_value = 255
    add_image_io(onnx_path, image_path, size, len(class_names), single_value)
    _say(t0, f"checking {IMAGE_ONNX_NAME} on {len(photos)} photo(s) at their own size against fsseg predict's path")
    image_parity = image_graph_parity(image_path, wrapper, photos, size)
    image_parity["input"] = str(query) if query else "random uint8 images 97x131, 403x299"
    script = out / REFERENCE_SCRIPT_NAME
    script.write_text(REFERENCE_SCRIPT.format(onnx=ONNX_NAME, size=size, names=class_names, fg=single_value))

    save_file(weights, str(out / "weights.safetensors"))
    hparams = {k: v for k, v in dict(module.hparams).items()}
    (out / "hparams.json").write_text(json.dumps(hparams, indent=2, default=str))
    record = {
        "model": support_record["kind"], "class_path": f"{type(module).__module__}.{type(module).__name__}",
        "onnx": str(onnx_path.resolve()), "image_onnx": str(image_path.resolve()),
        "reference_preprocessing": str(script.resolve()),
        "weights": str((out / "weights.safetensors").resolve()), "hparams": str((out / "hparams.json").resolve()),
        "exporter": exporter, "opset": opset, "image_size": size, "class_names": class_names,
        "classes": {"0": "background", **{str(c): n for c, n in enumerate(class_names, start=1)}},
        "support_names": support_record["support_names"], "supports": support_record["supports"],
        "preprocessing": {
            ONNX_NAME: f"RGB uint8 photo (EXIF orientation applied) -> cv2.resize to {size}x{size} INTER_LINEAR -> "
                       "float32 / 255 -> [1,3,S,S] (the graph normalises with the ImageNet mean/std inside); "
                       f"pred upsampled to the photo's size with nearest (torch) -> mask file: "
                       f"{'pred * 255' if len(class_names) == 1 else 'the class index'}; see {REFERENCE_SCRIPT_NAME}",
            IMAGE_ONNX_NAME: "RGB uint8 [H,W,3] of any size in (EXIF orientation applied); cv2.resize INTER_LINEAR "
                             "(its fixed-point arithmetic), / 255 and the mask upsampling inside; outputs pred [H,W], "
                             "mask [H,W] uint8, logits",
        },
        "mask_values": {"single_class": single_value, "several_classes": "class index 0..N"},
        "batch": batch_dim, "inputs": {"query": ["batch", 3, size, size]},
        "outputs": {"logits": ["batch", len(class_names), size, size], "pred": ["batch", size, size]},
        "onnx_vs_torch_max_abs_diff_logits": diff, "onnx_vs_torch_pred_agreement": pred_agree,
        "image_onnx_vs_predict": image_parity,
        "parity_batch": int(q2.shape[0]), "trained_tensors": len(weights),
        "trained_params": int(sum(v.numel() for v in weights.values())),
        "checkpoint": str(Path(ckpt_path).resolve()) if ckpt_path else None,
        "bundle": str(bundle_path) if bundle_path else None,
        "seconds": round(time.time() - t0, 2),
    }
    (out / "export.json").write_text(json.dumps(record, indent=2))
    _say(t0, f"done: {out.resolve()}")
    return record


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


if __name__ == "__main__":
    main()
