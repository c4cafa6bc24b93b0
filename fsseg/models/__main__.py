"""Parameter table of every variant (``fsseg params [--backbone dinov2_vitb14] [--image_size 518]``).

Models are built with random weights on the ``meta`` device (no memory, no checkpoint needed).
"trainable" = parameters with ``requires_grad`` in stage 2 (encoder and adapter frozen; SAM
decoder's IoU head and unused multimask hypernetworks frozen, see ``decoder.py``).
"""
from __future__ import annotations

import torch

from .build import build_fsdino
from .fsdino import VARIANTS


def count(module, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_table(backbone: str = "dinov2_vitb14", image_size: int = 518, device: str = "meta") -> str:
    models = {}
    with torch.device(device):
        for v in VARIANTS:
            models[v] = build_fsdino(v, backbone=backbone, image_size=image_size, mamba_backend="torch")
    full, uino, uino_large = models["full"], models["uino"], models["uino_large"]
    rows = [
        ("encoder (frozen DINOv2)", count(full.encoder)),
        ("bottleneck adapter (BA)", count(full.adapter)),
        ("SVP", count(full.svp)),
        ("PCS (parameter-free)", count(full.pcs)),
        ("4D correlation", count(full.correlation)),
        ("MHCM + CE (uino, compact)", count(uino.correlation)),
        ("MHCM + CE (uino_large)", count(uino_large.correlation)),
        ("mask decoder (all)", count(full.decoder)),
        ("mask decoder (trainable)", count(full.decoder, True)),
        ("PE (Gaussian matrix)", count(full.pe_layer)),
        ("mask downscaling", count(full.mask_downscaling)),
    ]
    lines = [f"FS-DINO parameters, backbone={backbone}, image {image_size} (grid {image_size // 14})", ""]
    w = max(len(r[0]) for r in rows) + 2
    lines.append(f"{'component':<{w}}{'params':>14}")
    for name, n in rows:
        lines.append(f"{name:<{w}}{n:>14,}")
    lines.append("")
    lines.append(f"{'variant':<{w}}{'stage-2 trainable':>18}{'+ adapter':>14}{'segmenter total':>17}")
    for v, m in models.items():
        tr = count(m, True)
        seg = count(m) - count(m.encoder)
        lines.append(f"{v:<{w}}{tr:>18,}{tr + count(m.adapter):>14,}{seg:>17,}")
    return "\n".join(lines)


def main(argv=None) -> None:
    from fsseg.params import main as params_main

    params_main(argv, prog="fsseg params")


if __name__ == "__main__":
    main()
