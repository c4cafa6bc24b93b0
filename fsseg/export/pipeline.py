"""``export()``: the files of ``fsseg export`` (see ``fsseg.export``) for one checkpoint, each graph
checked against PyTorch before it is recorded in ``export.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from fsseg.export.image_graph import add_image_io, image_graph_parity
from fsseg.export.onnx_graph import onnx_batch_dim, onnx_export, run_onnx
from fsseg.export.reference_script import REFERENCE_SCRIPT
from fsseg.inference import load_module

ONNX_NAME = "fsseg_segmenter.onnx"
IMAGE_ONNX_NAME = "fsseg_image_segmenter.onnx"
REFERENCE_SCRIPT_NAME = "preprocess_reference.py"
BUNDLE_NAME = "fsseg_bundle.ckpt"


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

    from fsseg.export.wrappers import EncodedSegmenter, StudentSegmenter, trained_state_dict
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
        wrapper = StudentSegmenter(module.student).eval()
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
        wrapper = EncodedSegmenter(module.model, encodings).eval()
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
