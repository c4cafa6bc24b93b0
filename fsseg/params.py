"""``fsseg params``: parameter table of every FS-DINO variant (built on the meta device: instant, no weights)."""

from __future__ import annotations

import argparse
from typing import Optional


def main(argv: Optional[list[str]] = None, prog: str = "fsseg params") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split(": ", 1)[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vitb14",
                    help="DINOv2 architecture: dinov2_vit{s,b,l,g}14[_reg4] or dinov2_tiny")
    ap.add_argument("--image_size", type=int, default=518, help="model input size (grid = image_size // 14)")
    ap.add_argument("--device", default="meta", help="'meta' (instant, no memory) or 'cpu'")
    args = ap.parse_args(argv)
    # torch and the models only now: `fsseg params --help` answers without them
    from fsseg.models.__main__ import parameter_table
    from fsseg.models.backbones import BACKBONES
    from fsseg.registry import RegistryError

    try:
        BACKBONES.canonical(args.backbone)
    except RegistryError as e:
        ap.error(str(e))
    print(parameter_table(args.backbone, args.image_size, args.device))


if __name__ == "__main__":
    main()
