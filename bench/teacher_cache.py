"""Stage 1's teacher cache: bytes per entry and projected size per storage dtype, and what float16 /
bfloat16 storage changes against float32 on the demo's stage-1 setup.
``python -m bench.teacher_cache > bench/teacher_cache.json`` (the committed figures).

Method: the demo's models (``lightning_configs/demo/distill.yaml``: DINOv2-tiny student, SAM-tiny
teacher, 256 px synthetic images, batch 8, lr 0.002) at the curriculum's first resolution (56).
The teacher's embeddings of the training images are computed once in float32 and stored in a
``TensorDiskCache`` of each dtype; then the same initial module (seed 0) trains ``epochs`` epochs
on the same batches with its targets read from each cache. Reported: the MSE of each cached target
against the float32 one (and relative to the targets' mean square), the per-step distillation loss
of each run against the float32 run, and the bytes one entry takes for SAM ViT-H (256x64x64) with
the projected size for the paper's 110k images (1% of SA-1B).
"""
from __future__ import annotations

import json
import sys
import tempfile

DTYPES = ("float32", "float16", "bfloat16")


def measure_dtypes(epochs: int = 2, images: int = 240, resolution: int = 56) -> dict:
    import lightning as L
    import torch

    from callbacks.caches import _DTYPES, SA1B_ONE_PERCENT
    from data_modules import UnlabelledDataModule
    from fsseg.cache import TensorDiskCache
    from fsseg.modules import DistillationModule

    dm = UnlabelledDataModule(root=None, image_size=256, batch_size=8, synthetic_images=images, val_fraction=0.0,
                              shuffle=False)
    dm.setup()
    batches = list(dm.train_dataloader())
    out: dict = dict(setup="demo stage 1: dinov2_tiny student, SAM-tiny teacher, 256 px synthetic images, "
                           f"{images} images, batch 8, lr 0.002, resolution {resolution}, {epochs} epochs",
                     by_dtype={})
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for name in DTYPES:
            L.seed_everything(0)
            module = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=resolution, lr=0.002)
            module.log = module.log_dict = lambda *a, **k: None
            cache = TensorDiskCache(f"{tmp}/{name}", "bench", dtype=_DTYPES[name])
            targets = {}
            with torch.no_grad():
                for b in batches:  # the float32 targets, stored in this dtype
                    emb = module._run_teacher(*module._teacher_view(b)).float()
                    for k, e in zip(b["path"], emb):
                        cache.put(k, {"embedding": e})
                        targets[k] = e
            module.teacher_cache = cache
            mse = [torch.mean((cache.get(k)["embedding"].float() - t) ** 2).item() for k, t in targets.items()]
            power = sum(torch.mean(t ** 2).item() for t in targets.values()) / len(targets)
            opt = module.configure_optimizers()
            opt = opt["optimizer"] if isinstance(opt, dict) else opt
            module.train()
            losses = []
            for _ in range(epochs):
                for b in batches:
                    opt.zero_grad(set_to_none=True)
                    loss = module.training_step(b, 0)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
            assert module.teacher_calls == 0
            sam_h = {"embedding": torch.zeros(256, 64, 64)}
            per = cache.entry_bytes(sam_h)
            row = dict(target_mse=sum(mse) / len(mse), target_mse_relative=sum(mse) / len(mse) / power,
                       losses=losses, entry_bytes_sam_h=per, projected_gb_110k=SA1B_ONE_PERCENT * per / 1e9)
            if ref is None:
                ref = losses
            else:
                d = [abs(a - b) / b for a, b in zip(losses, ref)]
                row.update(loss_rel_diff_max=max(d), loss_rel_diff_mean=sum(d) / len(d),
                           final_loss_rel_diff=(losses[-1] - ref[-1]) / ref[-1])
            step = [abs(a - b) / b for a, b in zip(ref[1:], ref[:-1])]
            row["float32_step_to_step_rel_change_mean"] = sum(step) / len(step)
            out["by_dtype"][name] = row
            print(f"{name}: target MSE {row['target_mse']:.3g} (relative {row['target_mse_relative']:.2g}); "
                  f"entry {per / 1e6:.2f} MB (SAM ViT-H), 110k images {row['projected_gb_110k']:.0f} GB; "
                  f"final loss {losses[-1]:.5f}"
                  + (f", loss vs float32: max {row['loss_rel_diff_max']:.2e} mean {row['loss_rel_diff_mean']:.2e} "
                     "relative" if "loss_rel_diff_max" in row else ""), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(measure_dtypes(), indent=1))
