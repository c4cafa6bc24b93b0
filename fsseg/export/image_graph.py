"""``fsseg_image_segmenter.onnx``: the segmenter graph with fsseg's photo preprocessing inside (uint8
photo of any size in, OpenCV's INTER_LINEAR resize bit for bit, the mask at the photo's size out), and
its agreement with the PyTorch predict path."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
