"""``fsseg demo-ui``: a Gradio web demo of few-shot segmentation (``pip install 'fsseg[demo]'``).

    fsseg demo-ui --ckpt_path runs/.../best.ckpt [--host 127.0.0.1] [--port 7860]
    fsseg demo-ui --small                       # the small built-in (untrained) model, for a look

Give support shots of one class, as many as ``fsseg predict`` takes: up to three one by one (upload
an image and either upload its mask or paint the object on the image with the brush; an uploaded
mask wins over painting), and any number at once (select the images and their masks; a mask is
matched to its image by file name, as ``fsseg predict`` matches a support folder). Masks are read by
``fsseg predict``'s rules (``data_modules.image_io.binary_mask_from_array``: 0/1, 0/255, colours, JPEG
grey > 127, soft-edged grey masks >= 128). Upload a query photo and press *Segment*:
the app shows the query with the predicted object coloured and the mask (0/255, at the query's
own size), plus the object's pixel fraction. The supports are encoded once per click
(``FewShotModule.set_support_set``), the query decoded with ``segment_queries``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `fsseg demo-ui --help` answers at once.

SHOTS = 3


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    if img.shape[-1] == 4:
        img = img[..., :3]
    return img.astype(np.uint8)


def editor_image_and_mask(value: Any) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Gradio ImageEditor value -> (RGB background ``[H,W,3]`` uint8, painted mask ``[H,W]`` bool or None)."""
    if value is None:
        return None, None
    if isinstance(value, np.ndarray):
        return _rgb(value), None
    bg = value.get("background")
    layers = [np.asarray(x) for x in (value.get("layers") or []) if x is not None]
    if bg is None:
        bg = value.get("composite")
    if bg is None:
        return None, None
    bg = np.asarray(bg)
    painted = None
    for layer in layers:
        if layer.ndim == 3 and layer.shape[-1] == 4 and layer.shape[:2] == bg.shape[:2]:
            m = layer[..., 3] > 0
            painted = m if painted is None else painted | m
    if painted is not None and not painted.any():
        painted = None
    return _rgb(bg), painted


def mask_from_upload(mask: Optional[np.ndarray], size: tuple[int, int]) -> Optional[np.ndarray]:
    """Uploaded mask image (grey/RGB/RGBA; 0/1, 0/255, colours, or soft-edged grey: >= 128 is the
    object) -> bool ``[H,W]`` at ``size`` (nearest); the rules ``fsseg predict`` applies to mask files
    (``data_modules.image_io.binary_mask_from_array``)."""
    if mask is None:
        return None
    from data_modules.image_io import binary_mask_from_array

    m = binary_mask_from_array(mask, "uploaded mask") > 0
    if m.shape != tuple(size):
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(m.astype(np.float32))[None, None]
        m = F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5
    return m


def pair_uploaded_supports(images: Optional[list], masks: Optional[list]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Uploaded support files -> ``[(RGB [H,W,3], mask bool [H,W])]``: masks matched to images by file
    stem, each pair read by the same ``FileFewShotDataset.load`` that reads ``fsseg predict``'s support
    folder (EXIF orientation applied to both, mask encodings, the soft-mask rule, the size check). An
    image without a mask, or an unreadable pair, is a ``ValueError`` naming the file."""
    from data_modules.readers.base import FileFewShotDataset, stem

    images, masks = [str(p) for p in images or []], [str(p) for p in masks or []]
    if not images and not masks:
        return []
    by_stem = {stem(m).lower(): m for m in masks}
    pairs = FileFewShotDataset("auto")
    for path in sorted(images):
        if stem(path).lower() not in by_stem:
            raise ValueError(f"support image {os.path.basename(path)}: no mask with the same file name among the "
                             f"uploaded masks ({', '.join(os.path.basename(m) for m in masks) or 'none'})")
        pairs.records[path] = (path, by_stem[stem(path).lower()])
    shots = []
    for path in sorted(images):
        image, (mask,) = pairs.load(path, [0])
        shots.append((image, mask == 1))
    return shots


def _to_tensor(img: np.ndarray, size: int) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]


class DemoSegmenter:
    """The demo's model logic (no Gradio): supports -> encodings -> query mask at its own size."""

    def __init__(self, module) -> None:
        self.module = module.eval()
        self.size = int(module.hparams.image_size)

    def __call__(self, shots: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray) -> dict:
        import torch

        with torch.no_grad():
            return self._segment(shots, query)

    def _segment(self, shots: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray) -> dict:
        import torch
        import torch.nn.functional as F

        from fsseg.visualize import overlay

        if not shots:
            raise ValueError("give at least one support image with a mask (uploaded or painted)")
        if query is None:
            raise ValueError("upload a query image")
        s = self.size
        imgs = torch.stack([_to_tensor(img, s) for img, _ in shots])
        masks = torch.stack([F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(s, s),
                                           mode="nearest")[0, 0] for _, m in shots])
        self.module.set_support_set(imgs[None, None], masks[None, None], ["object"])
        query = _rgb(query)
        h, w = query.shape[:2]
        out = self.module.segment_queries(_to_tensor(query, s)[None])
        pred = F.interpolate(out["pred"][:, None].float(), size=(h, w), mode="nearest")[0, 0]
        mask = pred.cpu().numpy().astype(np.uint8)
        return {"overlay": overlay(query, mask), "mask": (mask > 0).astype(np.uint8) * 255,
                "fraction": float((mask > 0).mean())}


def build_app(module):
    """The Gradio Blocks app around ``module`` (a ``FewShotModule``)."""
    import gradio as gr

    seg = DemoSegmenter(module)

    def user_error(message: str):
        # a known user error: a message in the app and one line in the console, no traceback
        print(f"demo-ui: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return gr.Error(message, print_exception=False)
    editors, uploads = [], []

    def run(*values):
        *shot_values, many_images, many_masks, query = values
        images, mask_uploads, paintings = (shot_values[i * SHOTS:(i + 1) * SHOTS] for i in range(3))
        try:
            shots = pair_uploaded_supports(many_images, many_masks)
        except ValueError as e:  # a known user error: a message in the app, not a traceback
            raise user_error(str(e)) from e
        for image, up, ed in zip(images, mask_uploads, paintings):
            bg, painted = editor_image_and_mask(ed)
            img = _rgb(image) if image is not None else bg
            if img is None:
                continue
            try:
                m = mask_from_upload(up, img.shape[:2])
            except ValueError as e:  # a mask file the rules cannot read: a message, not a traceback
                raise user_error(str(e)) from e
            if m is None and painted is not None and painted.shape == img.shape[:2]:
                m = painted
            if m is None or not m.any():
                raise user_error("each support image needs a non-empty mask (upload one or paint the object)")
            shots.append((img, m))
        try:
            res = seg(shots, query)
        except ValueError as e:
            raise user_error(str(e)) from e
        h, w = res["mask"].shape
        return res["overlay"], res["mask"], f"{len(shots)} shot(s); query {w}x{h}; object {100 * res['fraction']:.1f}% of pixels"

    with gr.Blocks(title="fsseg few-shot segmentation") as demo:
        gr.Markdown("## fsseg: few-shot segmentation (FS-DINO)\nSupport images of one class with a mask each: "
                    "up to 3 below (upload the mask, or paint the object on the image) and/or any number at "
                    "once (images and masks matched by file name); upload a query, press **Segment**.")
        with gr.Row():
            many_images = gr.File(label="Support images (any number)", file_count="multiple", type="filepath",
                                  elem_id="support_files")
            many_masks = gr.File(label="Their masks (same file names)", file_count="multiple", type="filepath",
                                 elem_id="support_mask_files")
        images = []
        with gr.Row():
            for i in range(SHOTS):
                with gr.Column():
                    # a plain upload for the image (reliable in every browser), then the mask: uploaded,
                    # or painted on a copy of the image in the editor below it
                    images.append(gr.Image(label=f"Support {i + 1} image", type="numpy", elem_id=f"support{i}",
                                           sources=["upload", "clipboard"], image_mode="RGB", format="png",
                                           height=200))
                    uploads.append(gr.Image(label=f"Support {i + 1} mask (upload)", type="numpy",
                                            elem_id=f"support_mask{i}", sources=["upload", "clipboard"],
                                            height=200, image_mode="RGB", format="png"))
                    editors.append(gr.ImageEditor(label=f"... or paint the object on support {i + 1}",
                                                  type="numpy", elem_id=f"support_paint{i}",
                                                  sources=["upload", "clipboard"],
                                                  brush=gr.Brush(colors=["#ff0000"], default_size=20),
                                                  format="png", height=300))
                    images[-1].upload(lambda x: x, inputs=images[-1], outputs=editors[-1])
        with gr.Row():
            query = gr.Image(label="Query", type="numpy", elem_id="query", sources=["upload", "clipboard"],
                             image_mode="RGB", format="png")
            out_overlay = gr.Image(label="Prediction (overlay)", elem_id="result_overlay", format="png",
                                   interactive=False)
            out_mask = gr.Image(label="Predicted mask (0/255)", elem_id="result_mask", format="png",
                                image_mode="L", interactive=False)
        info = gr.Textbox(label="Result", elem_id="result_info", interactive=False)
        button = gr.Button("Segment", variant="primary", elem_id="run")
        button.click(run, inputs=[*images, *uploads, *editors, many_images, many_masks, query],
                     outputs=[out_overlay, out_mask, info])
    return demo


def load_module(ckpt_path: Optional[str], dinov2_checkpoint: Optional[str] = None):
    from fsseg.inference import load_module as _load

    return _load(ckpt_path, small=not ckpt_path, dinov2_checkpoint=dinov2_checkpoint)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg demo-ui", description="Gradio demo of few-shot segmentation",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt_path", help="FewShotModule checkpoint of `fsseg fit` (or an `fsseg export --bundle` file)")
    p.add_argument("--dinov2_checkpoint", default=None,
                   help="the frozen DINOv2 file, when it is not found by name (next to the checkpoint, ~/.cache/fsseg)")
    p.add_argument("--small", action="store_true", help="use the small built-in (untrained) model")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--precision", default="32",
                   help="32 | bf16-mixed | 16-mixed (GPU) | auto: as in `fsseg fit` (fsseg.precision)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when one is visible, else the CPU) | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    if not a.ckpt_path and not a.small:
        p.error("give --ckpt_path (a trained checkpoint) or --small (the small built-in untrained model)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise SystemExit("fsseg demo-ui needs gradio: pip install 'fsseg[demo]'") from e
    from fsseg.inference import inference_device, place_module

    try:
        device = inference_device(a.device)
    except ValueError as e:
        p.error(str(e))
    module = load_module(None if a.small else a.ckpt_path, a.dinov2_checkpoint)
    try:
        place_module(module, device, a.precision)
    except ValueError as e:  # an unknown precision, or 16-mixed without a GPU
        p.error(str(e))
    print(f"fsseg demo-ui: model on {device} at precision {module.model.precision} (--device, --precision)",
          file=sys.stderr)
    build_app(module).launch(server_name=a.host, server_port=a.port, ssr_mode=False, share=False)


if __name__ == "__main__":
    main()
