"""``fsseg params``: parameter table of every registered method (built on the meta device: instant, no weights).

"trainable" = parameters with ``requires_grad`` in stage 2 (encoder and adapter frozen; SAM decoder's
IoU head and unused multimask hypernetworks frozen, see ``fsseg.models.decoder``).
"""

from __future__ import annotations

import argparse
from typing import Optional


def count(module, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# components every method shares, named as in ``FSDINO.parts``
SHARED_PARTS = (("encoder", "encoder (frozen DINOv2)"), ("adapter", "bottleneck adapter (BA)"), ("svp", "SVP"),
                ("pcs", "PCS (parameter-free)"))
DECODER_PARTS = (("pe", "PE (Gaussian matrix)"), ("mask_downscaling", "mask downscaling"))
CORRELATION_NAMES = {"corr4d": "4D correlation", "mhcm": "MHCM + CE"}


def parameter_table(backbone: str = "dinov2_vitb14", image_size: int = 518, device: str = "meta") -> str:
    """Components, then every registered method (presets left out), with random weights on ``device``."""
    import torch

    from fsseg.models.segmenters import SEGMENTERS, build_segmenter, takes

    models = {}
    with torch.device(device):
        for name in SEGMENTERS.names(where=lambda s: s.preset_of is None):
            spec = {"name": name, "backbone": backbone}
            if takes(name, "mamba_backend"):
                spec["mamba_backend"] = "torch"  # no CUDA kernels on the meta device
            models[name] = build_segmenter(spec, image_size=image_size)
    first = next(iter(models.values()))
    with_svp = next((m for m in models.values() if m.svp is not None), first)
    rows = [(label, count((with_svp if part == "svp" else first).parts()[part])) for part, label in SHARED_PARTS]
    for name, m in models.items():
        if m.correlation is not None:
            rows.append((f"{CORRELATION_NAMES.get(m.correlation_part, m.correlation_part)} ({name})",
                         count(m.correlation)))
    rows += [("mask decoder (all)", count(first.decoder)), ("mask decoder (trainable)", count(first.decoder, True))]
    rows += [(label, count(first.parts()[part])) for part, label in DECODER_PARTS]
    lines = [f"FS-DINO parameters, backbone={backbone}, image {image_size} (grid {image_size // 14})", ""]
    w = max(len(r[0]) for r in rows) + 2
    lines.append(f"{'component':<{w}}{'params':>14}")
    for name, n in rows:
        lines.append(f"{name:<{w}}{n:>14,}")
    lines.append("")
    lines.append(f"{'method':<{w}}{'stage-2 trainable':>18}{'+ adapter':>14}{'segmenter total':>17}")
    for v, m in models.items():
        tr = count(m, True)
        seg = count(m) - count(m.encoder)
        lines.append(f"{v:<{w}}{tr:>18,}{tr + count(m.adapter):>14,}{seg:>17,}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None, prog: str = "fsseg params") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split(": ", 1)[1].split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vitb14",
                    help="DINOv2 architecture: dinov2_vit{s,b,l,g}14[_reg4] or dinov2_tiny")
    ap.add_argument("--image_size", type=int, default=518, help="model input size (grid = image_size // 14)")
    ap.add_argument("--device", default="meta", help="'meta' (instant, no memory) or 'cpu'")
    args = ap.parse_args(argv)
    # torch and the models only now: `fsseg params --help` answers without them
    from fsseg.models.backbones import BACKBONES
    from fsseg.registry import RegistryError

    try:
        BACKBONES.canonical(args.backbone)
    except RegistryError as e:
        ap.error(str(e))
    print(parameter_table(args.backbone, args.image_size, args.device))


if __name__ == "__main__":
    main()
