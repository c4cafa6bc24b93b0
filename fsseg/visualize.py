"""Overlays and qualitative panels (support with mask | query with ground truth | prediction)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# background transparent, then distinct colours for classes 1..N
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190], [0, 128, 128]],
                   dtype=np.uint8)


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[3,H,W]`` float in [0,1] (tensor) or ``[H,W,3]`` uint8 -> ``[H,W,3]`` uint8."""
    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return image


def overlay(image, mask, alpha: float = 0.5) -> np.ndarray:
    """Blend a class-index ``mask [H,W]`` (0 = background, 255 = ignore, shown grey) over an image."""
    img = to_uint8_image(image).astype(np.float32)
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.astype(np.int64)
    out = img.copy()
    fg = (m > 0) & (m != 255)
    colours = PALETTE[np.where(fg, (m - 1) % (len(PALETTE) - 1) + 1, 0)]
    out[fg] = (1 - alpha) * img[fg] + alpha * colours[fg]
    out[m == 255] = 0.5 * img[m == 255] + 0.5 * 128
    return out.round().astype(np.uint8)


def with_legend(image: np.ndarray, class_names) -> np.ndarray:
    """The image (same size) with a legend in its top-left corner: one swatch per class in
    ``overlay``'s colours (class c = ``class_names[c - 1]``; background uncoloured)."""
    names = list(class_names)
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    row = 14
    width = min(img.width, 22 + 7 * max(len(f"{c}: {n}") for c, n in enumerate(names, start=1)))
    draw.rectangle([0, 0, width, min(img.height, row * len(names) + 4)], fill=(255, 255, 255))
    for c, name in enumerate(names, start=1):
        colour = tuple(int(v) for v in PALETTE[(c - 1) % (len(PALETTE) - 1) + 1])
        y = 2 + (c - 1) * row
        draw.rectangle([2, y + 1, 12, y + 11], fill=colour)
        draw.text((16, y), f"{c}: {name}", fill=(0, 0, 0))
    return np.asarray(img)


def episode_panel(support: torch.Tensor, support_masks: torch.Tensor, query: torch.Tensor,
                  query_mask: torch.Tensor, pred: torch.Tensor, title: str = "") -> np.ndarray:
    """One row: K supports with their masks, the query with ground truth, the query with prediction."""
    tiles = [overlay(s, m.long()) for s, m in zip(support, support_masks)]
    tiles += [overlay(query, query_mask), overlay(query, pred)]
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles]
    row = np.concatenate(tiles, axis=1)
    if title:
        img = Image.fromarray(np.pad(row, ((14, 0), (0, 0), (0, 0)), constant_values=255))
        ImageDraw.Draw(img).text((2, 1), title, fill=(0, 0, 0))
        row = np.asarray(img)
    return row
