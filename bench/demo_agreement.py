"""Low precision on the trained demo model (``make demo``): its own test episodes in fp32 and each
lower precision, the share of predicted pixels equal to fp32 and each precision's mIoU."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from bench.common import REPO, log


def find_demo_checkpoint(demo_dir: Optional[str] = None) -> Optional[Path]:
    """The trained demo model's checkpoint (``make demo`` writes ``outputs/demo/fewshot/checkpoints``)."""
    root = Path(demo_dir) if demo_dir else REPO / "outputs" / "demo"
    for name in ("best.ckpt", "last.ckpt"):
        p = root / "fewshot" / "checkpoints" / name
        if p.exists():
            return p
    return None


def demo_agreement(precisions: List[str], device: str = "cpu", demo_dir: Optional[str] = None,
                   max_batches: Optional[int] = None) -> dict:
    """The trained demo model on its own test episodes (the data module saved in its checkpoint) in
    fp32 and each lower precision: share of predicted pixels equal to fp32, and each precision's mIoU.
    Needs ``make demo`` first; says so (never a made-up figure) when its checkpoint is absent."""
    import torch

    from data_modules import EpisodicDataModule
    from fsseg.metrics import FewShotIoU
    from fsseg.modules import FewShotModule

    ckpt = find_demo_checkpoint(demo_dir)
    if ckpt is None:
        where = Path(demo_dir) if demo_dir else REPO / "outputs" / "demo"
        return dict(skipped=f"no trained demo model under {where}: run `make demo` first (about 30 min), "
                            "then `python -m bench --sections inference` (or `make bench`)")
    hp = torch.load(str(ckpt), map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    dm = EpisodicDataModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    dm.setup("test")
    res = dict(checkpoint=str(ckpt), dataset=hp.get("dataset"), fold=hp.get("fold"), shots=hp.get("shots"),
               image_size=hp.get("image_size"), by_precision={})
    preds = {}
    for prec in precisions:
        module = FewShotModule.load_from_checkpoint(str(ckpt), map_location=device, weights_only=True).eval()
        module.model.set_precision(prec)
        metric = FewShotIoU(module.hparams.num_classes)
        out, pixels = [], 0
        with torch.inference_mode():
            for i, batch in enumerate(dm.test_dataloader()):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pred = module.predictions(module.forward_episode(batch))
                metric.update(pred, batch["query_mask"], batch["class_id"])
                out.append(pred.cpu())
                pixels += pred.numel()
        preds[prec] = torch.cat(out)
        r = metric.compute()
        e = dict(miou=float(r["miou"]), fbiou=float(r["fbiou"]), episodes=int(preds[prec].shape[0]))
        if prec != "32":
            e["pixel_agreement_vs_fp32"] = (preds[prec] == preds["32"]).float().mean().item()
            e["miou_diff_vs_fp32"] = e["miou"] - res["by_precision"]["32"]["miou"]
        res["by_precision"][prec] = e
        log(f"demo model [{prec}]: mIoU {e['miou']:.2f}" + (f", {100 * e['pixel_agreement_vs_fp32']:.2f}% pixels "
                                                         "as fp32" if prec != "32" else ""))
    return res
