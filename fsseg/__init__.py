"""fsseg: few-shot semantic segmentation with FS-DINO / UINO-FSS on PyTorch Lightning."""

__version__ = "0.1.0"
