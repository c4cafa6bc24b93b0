"""``preprocess_reference.py``, written next to the exported graph: the same preprocessing in OpenCV
around ``fsseg_segmenter.onnx`` (a template: ``.format(onnx=, size=, names=, fg=)``)."""

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
