"""``fsseg selfcheck --full-size``: the FS-DINO ``full`` stage-2 training step at full size with the real
loader, and batched 1-shot inference, in this process on random weights."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import lightning as L

from fsseg.selfcheck.check import Check
from fsseg.selfcheck.throughput import Throughput, _throughput_text


def encoder_flops(model, image_size: int) -> int:
    """FLOPs of the frozen encoder (DINOv2 + adapter) on one image (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.extract(torch.rand(1, 3, image_size, image_size, device=p.device))
    return int(counter.get_total_flops())


def full_size_checks(emit, device: str = "cuda", backbone: str = "dinov2_vitb14", image_size: int = 518,
                     batch_size: int = 8, steps: int = 30, precision: str = "bf16-mixed",
                     num_workers: Optional[int] = None, queries: int = 32) -> None:
    """The FS-DINO ``full`` stage-2 training step with the real loader and batched 1-shot inference,
    random weights (in-process; ``device``/``backbone``/``image_size`` smaller for a test on the CPU)."""
    import torch

    from data_modules import EpisodicDataModule
    from fsseg.modules import FewShotModule

    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    torch.manual_seed(0)
    module = FewShotModule(segmenter={"name": "full", "backbone": backbone}, image_size=image_size,
                           dinov2_checkpoint=None, sam_checkpoint=None, adapter_checkpoint=None)
    dm = EpisodicDataModule(dataset="synthetic", image_size=image_size, synthetic_image_size=image_size,
                            batch_size=batch_size, num_workers=workers, train_episodes_per_epoch=batch_size * steps,
                            val_episodes=1)
    with tempfile.TemporaryDirectory() as tmp:
        meter = Throughput(str(Path(tmp) / "t.json"))
        trainer = L.Trainer(accelerator="gpu" if device == "cuda" else device, devices=1, precision=precision,
                            max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, dm)
        t = json.loads((Path(tmp) / "t.json").read_text())
    module.to(device).eval()
    module.model.set_precision(precision, device)
    per_episode = encoder_flops(module.model, image_size) * (1 + dm.shots)  # query + K supports
    rate = t["episodes_per_s"] or 0.0
    emit(Check(f"full-size: FS-DINO full training step at {image_size}, {precision}, batch {batch_size}",
               "PASS" if rate > 0 else "FAIL",
               f"{_throughput_text(t)}; frozen encoder {per_episode * rate / 1e12:.1f} TFLOP/s achieved; "
               f"{'the GPU waits for the loader' if t['data_wait_s'] > 0.1 * t['compute_s'] else 'the loader keeps up'}"
               f" ({workers} workers)"))
    # 1-shot inference batched on one support set
    g = torch.Generator().manual_seed(0)
    support = torch.rand(1, 1, 1, 3, image_size, image_size, generator=g)
    masks = torch.zeros(1, 1, 1, image_size, image_size)
    masks[..., image_size // 4: 3 * image_size // 4, image_size // 4: 3 * image_size // 4] = 1
    batch = torch.rand(min(queries, 16), 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        module.set_support_set(support, masks, ["object"])
        module.segment_queries(batch)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0, done = time.perf_counter(), 0
        while done < queries:
            out = module.segment_queries(batch)
            done += batch.shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(out["logits"]).all())
    emit(Check(f"full-size: 1-shot inference at {image_size}, {precision}, batches of {batch.shape[0]} queries",
               "PASS" if finite else "FAIL", f"{done / seconds:.1f} queries/s" + ("" if finite else ", non-finite logits")))
