"""Input pipeline: the CPU cost of one training episode, the bytes it sends to the device, and the
loader cores a GPU needs to be fed at the model's FLOPs per episode. ``python -m bench --sections loader``.

Method
------
* Episodes: ``EpisodeDataset`` training episodes (COCO-20i reader, fold 0 train classes, 1-way) at the
  model size, ``fsseg`` and ``hdmnet`` augmentation (COCO's scale range), 1 and 5 shots, built as a
  ``num_workers=0`` loader builds them: in this process, one torch and one OpenCV thread. Images:
  ``../shared/data/coco128`` (real COCO JPEGs) when present, else a generated tree of 640x480 JPEGs with
  class-index PNG masks (``write_coco_tree``); the report names which.
* CPU ms per episode: ``time.thread_time`` around ``dataset[i]`` (CPU seconds of this thread, so other
  jobs on a shared machine do not count), median over ``loader_reps`` episodes; the two input paths
  (``exact``: HDMNet's float32 chain and float32 batches; ``fast``: uint8 batches, ``FusedHDMNetAugment``;
  ``device``: JPEG bytes, decoded and augmented on the device)
  are timed in alternation on the same episode ids (``bench.common.timeit_interleaved``).
* Floors: decoding the episode's 1+K JPEGs alone (``read_image``) and its 1+K PNG masks alone
  (``read_mask``), the same episodes, same clock.
* Bytes to the device: the tensors of one collated episode (``collate_dicts``) as the loader hands them over.
* GPU side: FLOPs of one training step (batch 1, the frozen DINOv2 forward + the trainable part's
  forward and backward) counted with ``FlopCounterMode`` on the bench model (``compact`` variant), and
  the trainable part's step time measured here (frozen features served from a warm
  ``TensorDiskCache``, as ``bench.training``). Episodes a GPU eats per second = ``UTILIZATION`` x its
  datasheet dense bf16 peak / FLOPs per episode; loader cores it needs = that rate x CPU s per episode.
  The peaks are vendor figures, not measured: the cores-needed columns are estimates.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench.common import REPO, log, timeit, timeit_interleaved

PATHS = ("exact", "fast", "device")  # data_modules.episodes.INPUT_PATHS, in report order
# Datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s (vendor figures; estimates here).
GPU_CLASSES = (
    ("RTX A6000 (Ampere)", 154.8),
    ("A100 SXM", 312.0),
    ("H100 SXM", 989.4),
)
# The fraction of its peak a well-fed GPU sustains on a ViT forward in bf16 (an assumption, stated).
UTILIZATION = 0.4
COCO128 = Path(os.environ.get("FSSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco128"


def write_coco_tree(root: str | os.PathLike, n: int, size=(480, 640), seed: int = 0, quality: int = 90) -> Path:
    """A coco128-style tree (``images/<id>.jpg``, ``masks/<id>.png`` class-index, 0 = background) of
    ``n`` generated images: 1-3 filled rectangles of six COCO classes on a noisy background."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    # four fold-0 training and two fold-0 novel classes (mask value v is class v - 1; fold 0 holds out
    # range(0, 80, 4), data_modules/benchmarks/coco20i.py): even a small tree gives both splits classes with the K + 1
    # images a 5-shot episode needs
    pool = [v for v in range(1, 81) if (v - 1) % 4 != 0][:4] + [v for v in range(1, 81) if (v - 1) % 4 == 0][:2]
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
            y1, x1 = y0 + int(rng.integers(h // 8, h // 2)), x0 + int(rng.integers(w // 8, w // 2))
            mask[y0:y1, x0:x1] = pool[int(rng.integers(len(pool)))]
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)).copy()
        image[mask > 0] = (image[mask > 0] // 2 + (mask[mask > 0, None] * 3) % 128).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:012d}.jpg", quality=quality)
        Image.fromarray(mask).save(root / "masks" / f"{i:012d}.png")
    return root


def _episode_bytes(item: dict) -> int:
    import torch

    from data_modules.device_decode import DeviceImages
    from data_modules.episodes import collate_dicts

    batch = collate_dicts([item])
    return sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor)) + sum(
        im.nbytes for v in batch.values() if isinstance(v, list) for im in v if isinstance(im, DeviceImages))


def episode_costs(root: str, size: int, shots_list, reps: int) -> list:
    import cv2
    import torch

    from data_modules.benchmarks.coco20i import Coco20i
    from data_modules.episodes import INPUT_PATHS, EpisodeDataset
    from data_modules.hdmnet_augment import HDMNET_SCALE
    from data_modules.image_io import read_image, read_mask

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = []
    try:
        ds = Coco20i(root, fold=0, split="train")
        for aug in ("fsseg", "hdmnet"):
            for shots in shots_list:
                dsets = {p: EpisodeDataset(ds, shots, length=10**6, image_size=size, train=True, augmentation=aug,
                                           hdmnet_scale=HDMNET_SCALE["coco"], input_path=p) for p in INPUT_PATHS}
                fns = {p: (lambda d=d, ids=itertools.count(): d[next(ids)]) for p, d in dsets.items()}
                t = timeit_interleaved(fns, 2, reps, clock=time.thread_time)
                files = [ds.records[k] for i in range(2, 2 + reps)
                         for ep in [dsets["exact"].episode(i)] for k in (ep.query, *ep.supports[0])]
                decode = timeit_interleaved({"jpeg": lambda it=itertools.cycle(files): read_image(next(it)[0]),
                                             "mask": lambda it=itertools.cycle(files): read_mask(next(it)[1])},
                                            1, len(files), clock=time.thread_time)
                row = dict(augmentation=aug, shots=shots, size=size,
                           floor_jpeg_decode_ms=1e3 * decode["jpeg"]["median_s"] * (1 + shots),
                           floor_mask_decode_ms=1e3 * decode["mask"]["median_s"] * (1 + shots))
                for p in INPUT_PATHS:
                    row[p] = dict(cpu_ms=1e3 * t[p]["median_s"], min_ms=1e3 * t[p]["min_s"], runs=t[p]["runs"],
                                  bytes=_episode_bytes(dsets[p][0]))
                for p in INPUT_PATHS:
                    row[p]["speedup_vs_exact"] = row["exact"]["cpu_ms"] / row[p]["cpu_ms"]
                rows.append(row)
                log(f"loader {aug} {shots}-shot @{size}: " + ", ".join(
                    f"{p} {row[p]['cpu_ms']:.1f} ms ({row[p]['bytes'] / 1e6:.2f} MB, {row[p]['speedup_vs_exact']:.2f}x)"
                    for p in INPUT_PATHS) + f"; decode floors: JPEG {row['floor_jpeg_decode_ms']:.1f} ms, "
                    f"PNG masks {row['floor_mask_decode_ms']:.1f} ms")
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    return rows


def model_costs(cfg: dict, shots_list, device: str) -> dict:
    """FLOPs of one training episode (frozen forward + trainable forward/backward) and the trainable
    part's step time here (frozen features from a warm cache)."""
    from bench.training import compact_training_setup, training_batch
    from fsseg.cache import TensorDiskCache
    from fsseg.flops import count_flops

    size = cfg["size"]
    fm, opt = compact_training_setup(cfg, device)
    out = dict(variant="compact", backbone=cfg["backbone"], size=size, batch=1, by_shots={})
    for shots in shots_list:
        batch = training_batch(size, shots, device)

        def step(batch=batch):
            opt.zero_grad(set_to_none=True)
            fm.training_step(batch, 0).backward()
            opt.step()

        with tempfile.TemporaryDirectory() as tmp:
            fm.feature_cache_store = TensorDiskCache(tmp, fm.feature_namespace())
            total = count_flops(step)  # cold: the frozen forward runs and fills the cache
            trainable = count_flops(step)  # warm: the trainable part only
            t = timeit(step, 0, cfg["reps"], device)
            fm.feature_cache_store = None
        out["by_shots"][shots] = dict(gflop_episode=total / 1e9, gflop_trainable=trainable / 1e9,
                                      trainable_step_s=t["median_s"], trainable_step=t)
        log(f"model {shots}-shot: {total / 1e9:.0f} GFLOP per training episode ({trainable / 1e9:.1f} trainable), "
            f"trainable step here {t['median_s']:.3f} s")
    return out


def gpu_feed(rows: list, model: dict) -> list:
    """Per GPU class and episode kind: episodes/s it eats at ``UTILIZATION`` of its peak and the loader
    cores both input paths need to keep up."""
    out = []
    for name, tflops in GPU_CLASSES:
        for r in rows:
            m = model["by_shots"].get(r["shots"])
            if m is None:
                continue
            eps = UTILIZATION * tflops * 1e3 / m["gflop_episode"]
            out.append(dict(gpu=name, peak_bf16_tflops=tflops, augmentation=r["augmentation"], shots=r["shots"],
                            episodes_per_s=eps, cores_floor=eps * r["floor_jpeg_decode_ms"] / 1e3,
                            cores={p: eps * r[p]["cpu_ms"] / 1e3 for p in PATHS},
                            mb_per_s={p: eps * r[p]["bytes"] / 1e6 for p in PATHS}))
    return out


def pool_setup(n_masks: int, workers: Optional[int] = None) -> dict:
    """Seconds to set up a COCO-20i ``hdmnet`` data module (fold 0, train + val pools by the area
    rule) on a generated tree of ``n_masks`` masks: first run (areas counted from the masks, in
    parallel) and a second, fresh data module (areas read from ``mask_index_dir``)."""
    from data_modules import EpisodicDataModule

    out: dict = dict(masks=n_masks, workers=workers or min(16, len(os.sched_getaffinity(0))))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = write_coco_tree(Path(tmp) / "coco", n_masks, size=(240, 320))
        out["generate_s"] = time.perf_counter() - t
        for run in ("first_s", "second_s"):
            dm = EpisodicDataModule(dataset="coco20i", root=str(root), protocol="hdmnet", shots=1,
                                    mask_index_dir=str(Path(tmp) / "index"))
            t = time.perf_counter()
            dm.setup("fit")
            out[run] = time.perf_counter() - t
        out["train_images"] = len(dm.datasets["train"].dataset.all_keys())
    log(f"pools: hdmnet COCO-20i setup on {n_masks} masks: first {out['first_s']:.1f} s, second {out['second_s']:.2f} s")
    return out


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    shots_list = cfg["shots"]
    reps = 6 if cfg["quick"] else 40
    with tempfile.TemporaryDirectory() as tmp:
        if (COCO128 / "images").is_dir():
            root, source = str(COCO128), f"real COCO JPEGs ({COCO128})"
        else:
            root = str(write_coco_tree(Path(tmp) / "coco", 48 if cfg["quick"] else 128))
            source = "generated 640x480 JPEGs (../shared/data/coco128 not found)"
        # the episode's cost is the loader's: at the model size whatever the bench model is
        size = 518
        rows = episode_costs(root, size, shots_list, reps)
    model = model_costs(cfg, shots_list, devices[-1])
    res["loader"] = dict(source=source, size=size, reps=reps, rows=rows, model=model, utilization=UTILIZATION,
                         gpu=gpu_feed(rows, model), trainable_device=devices[-1],
                         pools=pool_setup(300 if cfg["quick"] else 5000))


def markdown(ld: dict) -> list:
    """The results.md section of ``res["loader"]``."""
    L = [f"Training episodes at {ld['size']}, COCO-20i fold 0 train classes, {ld['source']}; CPU ms = "
         f"`time.thread_time` of one `dataset[i]` (one torch/OpenCV thread, `num_workers=0`), median of "
         f"{ld['reps']} episodes, the paths timed in alternation on the same episodes. `exact` (before): HDMNet's "
         "float32 chain, float32 images / int64 labels (each image file now opened once instead of three times, "
         "in every path: the before figure is, if anything, low); `fast`: uint8 images and masks (converted on the device), "
         "`hdmnet` as one fused uint8 warp (not bit-equal, docs/protocols/hdmnet.md); `device`: as `fast`, "
         "`hdmnet`'s JPEGs sent as their bytes and decoded on the device (`data_modules/device_decode.py`: nvJPEG "
         "through `torchvision.io.decode_jpeg` on a GPU; here, without one, the training process decodes them, "
         "outside the loader's CPU counted in this table), then warped and blurred there on a 640x640 canvas. "
         "Floors: the episode's JPEG decodes alone (the CPU paths' floor) and its PNG mask decodes alone (the "
         "device path's: masks stay on the CPU, where the episode's sampling rules read them).",
         "", "| augmentation | K | CPU ms exact / fast / device | exact / fast, exact / device | decode floor ms "
             "JPEG / PNG masks | MB to device exact / fast / device |",
         "|---|---|---|---|---|---|"]
    for r in ld["rows"]:
        L.append(f"| {r['augmentation']} | {r['shots']} | " + " / ".join(f"{r[p]['cpu_ms']:.1f}" for p in PATHS)
                 + f" | {r['fast']['speedup_vs_exact']:.2f}x, {r['device']['speedup_vs_exact']:.2f}x | "
                 f"{r['floor_jpeg_decode_ms']:.1f} / {r.get('floor_mask_decode_ms', float('nan')):.1f} | " + " / ".join(f"{r[p]['bytes'] / 1e6:.2f}" for p in PATHS) + " |")
    m = ld["model"]
    L += ["", f"Model ({m['variant']}, `{m['backbone']}` at {m['size']}, batch 1): "
          + "; ".join(f"{k}-shot {v['gflop_episode']:.0f} GFLOP per training episode ({v['gflop_trainable']:.1f} in "
                      f"the trainable part), trainable step measured here ({ld['trainable_device']}, frozen "
                      f"features cached) median {v['trainable_step_s'] * 1e3:.0f} ms, min "
                      f"{v['trainable_step']['min_s'] * 1e3:.0f} ms (wall time: other jobs on the cores count)"
                      for k, v in m["by_shots"].items()) + ".",
          "", f"**Estimates** (datasheet dense bf16 peaks, not measured; {100 * ld['utilization']:.0f}% of peak "
          "sustained): episodes/s a GPU eats and loader cores needed to feed it.", "",
          "| GPU (peak bf16 TFLOP/s) | augmentation | K | episodes/s | loader cores exact / fast / device | "
          "cores at the decode floor | MB/s to device exact / fast / device |",
          "|---|---|---|---|---|---|---|"]
    for g in ld["gpu"]:
        L.append(f"| {g['gpu']} ({g['peak_bf16_tflops']:.0f}) | {g['augmentation']} | {g['shots']} | "
                 f"{g['episodes_per_s']:.0f} | " + " / ".join(f"{g['cores'][p]:.1f}" for p in PATHS)
                 + f" | {g['cores_floor']:.1f} | " + " / ".join(f"{g['mb_per_s'][p]:.0f}" for p in PATHS) + " |")
    p = ld.get("pools")
    if p:
        L += ["", f"Pools: setting up a COCO-20i `hdmnet` data module (fold 0; train and val pools by the "
              f"2*32*32-pixel rule) on a generated tree of {p['masks']} masks (320x240): first run "
              f"{p['first_s']:.1f} s (class areas counted from the masks, {p['workers']} worker processes), "
              f"second run {p['second_s']:.2f} s (areas read from `mask_index_dir`)."]
    here = {k: 1.0 / v["trainable_step_s"] for k, v in m["by_shots"].items()}
    L += ["", "Which side waits here: the trainable part alone steps at "
          + ", ".join(f"{k}-shot {v:.1f} episodes/s" for k, v in here.items())
          + " on this machine; one loader core prepares "
          + ", ".join(f"{r['augmentation']} {r['shots']}-shot " + " / ".join(f"{1e3 / r[p]['cpu_ms']:.0f}" for p in PATHS)
                      for r in ld["rows"]) + " (exact / fast / device) episodes/s."]
    return L


def target(ld: dict) -> Optional[dict]:
    rows = [r for r in ld.get("rows", []) if r["augmentation"] == "hdmnet"]
    if not rows:
        return None
    worst = min(r["device"]["speedup_vs_exact"] for r in rows)
    return dict(name="hdmnet training episode's CPU cost at least halved (device input path vs exact)",
                target=">= 2x", value=worst, passed=worst >= 2.0,
                measured=", ".join(f"{r['shots']}-shot {r['exact']['cpu_ms']:.1f} -> fast {r['fast']['cpu_ms']:.1f} / "
                                   f"device {r['device']['cpu_ms']:.1f} ms ({r['fast']['speedup_vs_exact']:.2f}x / "
                                   f"{r['device']['speedup_vs_exact']:.2f}x; JPEG floor {r['floor_jpeg_decode_ms']:.1f} ms)"
                                   for r in rows),
                why="fast: uint8 throughout, one affine warp for scale+rotate+flip+resize, uint8 batches; device: "
                    "JPEGs travel as bytes and are decoded, warped and blurred on the device; the CPU reads the files "
                    "and decodes and warps the masks: what remains is mostly the PNG mask decodes")
