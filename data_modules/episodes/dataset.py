"""The torch Dataset producing episode dicts, its samplers (training draws, the DDP split) and collate.

Episodes
--------
An ``Episode`` is (query key, supports per way, class id per way). Way 0's class is the query's
class; for N-way episodes the other N-1 classes are distinct and may or may not be in the query.
A class is eligible only if it has at least K+1 samples (the query plus K different supports).

* Training: ``sample_episode`` draws a random episode. In ``EpisodeDataset(train=True)`` the item
  index is a *draw id* and the episode and its augmentation are seeded by ``(seed, draw id)`` only.
  ``TrainEpisodeSampler`` hands out draw ids ``epoch * length + i`` (strided across DDP ranks; under
  DDP ``length`` is rounded up to a multiple of the world size so the ranks step together), so
  every epoch, rank and worker draws different episodes, and a run resumed from a checkpoint sees
  exactly the episodes an uninterrupted run would (no dependence on global RNG state).
* Val/test: ``fixed_episode_list`` materialises the list once from ``np.random.default_rng(seed)``
  (seed 0 by default). It never touches worker or process RNG, so the list is the same with any
  number of workers or processes. Items are loaded with deterministic per-index seeds.

DDP
---
``StridedDistributedSampler(n, num_replicas, rank)`` gives rank r the indices ``r, r+W, r+2W, ...``:
disjoint, union == full list, no padding duplicates (unlike ``DistributedSampler``). When the list
length is not divisible by W the first ``n % W`` ranks get one more episode; metrics sum their
states across ranks, so uneven shards are fine (do not sync per step). It subclasses
``DistributedSampler`` so Lightning leaves it in place.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..device_decode import DeviceImages, canvases_on_device
from ..hdmnet_augment import HDMNET_SCALE, IMAGENET_MEAN_255, DeferredWarp, warp_on_device
from ..image_io import IGNORE_INDEX, BadSampleError
from ..readers.base import FewShotDataset
from ..transforms import PairTransform, image_to_tensor, image_to_uint8_tensor, images_to_float, scoring_label
from .draw import Episode, eligible_classes, sample_episode

INPUT_PATHS = ("exact", "fast", "device")
# Canvas the ``device`` input path places images on (COCO and PASCAL images fit: <= 640 px).
DEVICE_CANVAS = 640


class StridedDistributedSampler(DistributedSampler):
    """Rank r gets indices r, r+W, ... of a fixed list: disjoint, complete, no padding."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class TrainEpisodeSampler(DistributedSampler):
    """Draw ids for random training episodes. An epoch has ``draws_per_epoch`` draws: ``length``
    rounded up to a multiple of the world size W, so every rank takes the same number of steps (a rank
    with a batch fewer leaves the others waiting in the gradient all-reduce for ever). Epoch ``e`` on
    rank ``r`` gets ``e*D + r, e*D + r + W, ...`` (D = ``draws_per_epoch``); the ``D - length < W``
    extra draws are ordinary draw ids, seeded like the rest, and with one process D = ``length``.
    Lightning calls ``set_epoch``; being a ``DistributedSampler`` subclass, Lightning leaves it in
    place under DDP."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.num_replicas, self.rank, self.epoch = length, num_replicas, rank, 0
        self.draws_per_epoch = -(-length // num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        start = self.epoch * self.draws_per_epoch
        return iter(range(start + self.rank, start + self.draws_per_epoch, self.num_replicas))

    def __len__(self) -> int:
        return self.draws_per_epoch // self.num_replicas


def rank_slice(items: Sequence, rank: int, world_size: int) -> list:
    """The same rule as ``StridedDistributedSampler`` for plain lists."""
    return list(items[rank::world_size])


def _binary_support(mask: np.ndarray, dtype=np.float32) -> torch.Tensor:
    return torch.from_numpy((mask == 1).astype(dtype))


def batch_to_model_dtypes(batch: Dict) -> Dict:
    """An episode batch as the models take it (docs/CONTRACTS.md): uint8 images -> float32 in
    [0, 1], uint8 support masks -> float32, uint8 query masks -> int64. Run where the batch is (the
    device, ``on_after_batch_transfer``); a batch already in these dtypes is returned as it is.
    Items of the ``device`` input path carry ``DeviceImages`` and ``<key>_affine`` / ``<key>_blur``:
    their JPEGs are decoded and the canvases augmented here (``canvases_on_device``, ``warp_on_device``)."""
    for key in ("query", "support"):
        if f"{key}_affine" in batch:
            canvas, affine, blur = batch[key], batch.pop(f"{key}_affine"), batch.pop(f"{key}_blur")
            if not isinstance(canvas, torch.Tensor):  # the items' DeviceImages: decode and place here
                canvas = canvases_on_device(canvas, DEVICE_CANVAS, IMAGENET_MEAN_255, affine.device)
            lead = canvas.shape[:-3]
            size = batch["query_mask"].shape[-1]
            out = warp_on_device(canvas.reshape(-1, *canvas.shape[-3:]), affine.reshape(-1, 2, 3),
                                 blur.reshape(-1, 2), size)
            batch[key] = out.reshape(*lead, *out.shape[1:])
        if key in batch and isinstance(batch[key], torch.Tensor):
            batch[key] = images_to_float(batch[key])
    if isinstance(batch.get("support_masks"), torch.Tensor) and batch["support_masks"].dtype == torch.uint8:
        batch["support_masks"] = batch["support_masks"].float()
    if isinstance(batch.get("query_mask"), torch.Tensor) and batch["query_mask"].dtype == torch.uint8:
        batch["query_mask"] = batch["query_mask"].long()
    return batch


def query_index_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Combine per-class {0,1,255} masks into class-index 0..N (+255 where ignored and unclaimed)."""
    out = np.zeros(masks[0].shape, dtype=np.int64)
    ignore = np.zeros(masks[0].shape, dtype=bool)
    for j, m in enumerate(masks):
        out[(m == 1) & (out == 0)] = j + 1
        ignore |= m == IGNORE_INDEX
    out[ignore & (out == 0)] = IGNORE_INDEX
    return out


class EpisodeDataset(Dataset):
    """Torch dataset of episode dicts (one item = one episode, see docs/CONTRACTS.md).

    ``episodes`` given -> fixed list (val/test); ``episodes=None`` -> ``length`` training episodes,
    draw id ``i`` -> ``train_draw(i)`` when a protocol gives one (``protocols.py``), else a random
    episode seeded by ``(seed, i)``.
    ``skip_bad_samples=True``: an episode touching a bad file is replaced by one drawn from a
    generator seeded by ``(seed, index, attempt)`` avoiding the bad files met while loading *this*
    episode (same classes when possible), so every episode is a function of its index and the data
    only, whatever the worker count, rank or load order; the skip is counted with a warning.
    Otherwise the ``BadSampleError`` propagates, naming the file.
    ``scoring_size`` (val/test): ``model``, an int or ``original`` -- the last two add the item key
    ``query_label_orig`` (``transforms.scoring_label``, docs/protocols/scoring.md).
    ``augmentation`` (train): ``fsseg`` or ``hdmnet`` (``transforms.HDMNetAugment`` with ``hdmnet_scale``).
    ``input_path``: ``exact`` -- images float32 in [0, 1], masks float32/int64, ``hdmnet`` as
    HDMNet's float32 chain; ``fast`` -- images and masks leave as uint8 (a quarter / an eighth of the
    bytes; ``batch_to_model_dtypes`` converts them on the device, bit-equal) and ``hdmnet`` runs
    ``FusedHDMNetAugment`` (uint8, one resampling; not bit-equal to HDMNet's chain); ``device`` --
    as ``fast``, but ``hdmnet``'s image warp and blur run on the device (``warp_on_device``): images
    leave as ``DeviceImages`` (JPEG bytes where the device decodes them, ``device_decode``; else decoded,
    at most ``DEVICE_CANVAS`` square) with their map (``<key>_affine``, ``<key>_blur``).
    """

    def __init__(self, dataset: FewShotDataset, shots: int = 1, n_way: int = 1,
                 episodes: Optional[List[Episode]] = None, length: int = 1000, image_size: int = 518,
                 train: bool = False, augment: bool = True, seed: int = 0, skip_bad_samples: bool = False,
                 max_retries: int = 20, train_draw=None, scoring_size: Union[str, int] = "model",
                 augmentation: str = "fsseg", hdmnet_scale: Tuple[float, float] = HDMNET_SCALE["pascal"],
                 input_path: str = "exact") -> None:
        if input_path not in INPUT_PATHS:
            raise ValueError(f"input_path must be one of {INPUT_PATHS}, got {input_path!r}")
        self.input_path = input_path
        self.dataset, self.shots, self.n_way = dataset, shots, n_way
        self.train_draw = train_draw
        self.episodes = episodes
        self.length = length
        # the sampler's epoch stride (``TrainEpisodeSampler.draws_per_epoch``): ``length`` rounded up
        # to a multiple of the DDP world size; the loader sets it
        self.draws_per_epoch = length
        self.train = train
        self.transform = PairTransform(image_size, train=train and augment, augmentation=augmentation,
                                       hdmnet_scale=hdmnet_scale, exact=input_path == "exact",
                                       device=input_path == "device")
        if scoring_size != "model":
            scoring_label(np.zeros((1, 1), np.uint8), scoring_size)  # validates the value early
        # Training batches are scored by the loss at the model size: no scoring label there.
        self.scoring_size = "model" if train else scoring_size
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.max_retries = max_retries
        self.num_skipped = 0
        self.bad_keys: set = set()
        self._eligible = eligible_classes(dataset, shots, n_way)

    def __len__(self) -> int:
        return len(self.episodes) if self.episodes is not None else self.length

    def episode(self, index: int) -> Episode:
        """The episode for an index (fixed list entry, or a fresh random draw for training)."""
        if self.episodes is not None:
            return self.episodes[index]
        if self.train_draw is not None:
            return self.train_draw(index, self.draws_per_epoch)
        rng = np.random.default_rng([self.seed, index])
        return sample_episode(self.dataset, rng, self.shots, self.n_way, self._eligible)

    def __getitem__(self, index: int) -> Dict:
        ep = self.episode(index)
        bad_here: set = set()  # bad files met by this episode only: the replacement never depends on load order
        for attempt in range(self.max_retries + 1):
            try:
                item = self._load(ep, index, attempt)
                item["eval_seed"] = ep.seed_index
                return item
            except BadSampleError as e:
                if not self.skip_bad_samples:
                    raise
                self.num_skipped += 1
                self.bad_keys.add(e.path)
                bad_here.add(e.path)
                records = getattr(self.dataset, "records", {})  # a bad *mask* file bans its sample too
                bad = frozenset(k for k in self.dataset.all_keys()
                                if self.dataset.describe(k) in bad_here or k in bad_here
                                or any(p in bad_here for p in records.get(k, ())))
                warnings.warn(f"skip_bad_samples: skipped bad sample {e.path} ({e.reason}); "
                              f"{self.num_skipped} skipped so far in this process", stacklevel=2)
                rng = np.random.default_rng([self.seed, index, attempt + 1])
                try:
                    replacement = sample_episode(self.dataset, rng, self.shots, self.n_way, self._eligible,
                                                 first_class=ep.class_ids[0], banned=bad)
                except (ValueError, IndexError):  # too few good images left in that class: any class with enough
                    usable = [c for c in self._eligible if sum(k not in bad for k in self.dataset.samples_by_class[c])
                              >= self.shots + 1]
                    replacement = sample_episode(self.dataset, rng, self.shots, self.n_way, usable, banned=bad)
                ep = Episode(replacement.query, replacement.supports, replacement.class_ids, ep.seed_index)
        raise RuntimeError(f"episode {index}: more than {self.max_retries} bad samples in a row")

    def _load(self, ep: Episode, index: int, attempt: int) -> Dict:
        ds = self.dataset
        fast = self.input_path != "exact"
        deferred = self.input_path == "device" and self.transform.hdmnet is not None
        to_tensor, stack, load = image_to_uint8_tensor if fast else image_to_tensor, torch.stack, ds.load
        warps: list = []
        if deferred:  # every image fitted for a device canvas + its map (a draw that fell back to the plain resize: identity)
            def to_tensor(img):
                warp = img if isinstance(img, DeferredWarp) else DeferredWarp(img, np.eye(2, 3, dtype=np.float32), (0.0, 0.0))
                image, matrix = warp.fit(DEVICE_CANVAS)
                warps.append((matrix, torch.tensor(warp.blur, dtype=torch.float32)))
                return image
            stack, load = list, ds.load_for_device  # JPEGs travel encoded (device_decode)
        mask_dtype, label_dtype = (np.uint8, np.uint8) if fast else (np.float32, np.int64)
        base_seed = None
        if self.transform.train:
            base_seed = int(np.random.default_rng([self.seed, index, attempt, 1]).integers(2**31))
        q_img, q_masks = load(ep.query, ep.class_ids)
        label_orig = None
        if self.scoring_size != "model":  # the label at the original size, before any resize
            label_orig = scoring_label(q_masks[0] if self.n_way == 1 else query_index_mask(q_masks),
                                       self.scoring_size)
        q_img, q_masks = self.transform(q_img, q_masks, None if base_seed is None else base_seed)
        sup_imgs, sup_masks = [], []
        for w, (c, keys) in enumerate(zip(ep.class_ids, ep.supports)):
            wi, wm = [], []
            for s, key in enumerate(keys):
                img, (m,) = load(key, [c])
                if not (m == 1).any():  # a support without foreground gives the model no prototype
                    raise BadSampleError(getattr(ds, "records", {}).get(key, (None, ds.describe(key)))[1],
                                         f"empty support mask: no foreground pixels for class "
                                         f"{ds.class_names.get(c, c)!r} (image {ds.describe(key)})")
                img, (m,) = self.transform(img, [m], None if base_seed is None else base_seed + 1 + w * 1000 + s)
                wi.append(to_tensor(img))
                wm.append(_binary_support(m, mask_dtype))
            sup_imgs.append(stack(wi))
            sup_masks.append(torch.stack(wm))
        if self.n_way == 1:
            qm = torch.from_numpy(q_masks[0].astype(label_dtype))
            support, support_masks = sup_imgs[0], sup_masks[0]
            class_id = torch.tensor(ep.class_ids[0], dtype=torch.int64)
            support_names = [ds.describe(k) for k in ep.supports[0]]
        else:
            qm = torch.from_numpy(query_index_mask(q_masks).astype(label_dtype))
            support, support_masks = stack(sup_imgs), torch.stack(sup_masks)
            class_id = torch.tensor(ep.class_ids, dtype=torch.int64)
            support_names = [[ds.describe(k) for k in keys] for keys in ep.supports]
        n_support = len(warps)
        item = {
            "query": to_tensor(q_img),
            "query_mask": qm,
            "support": support,
            "support_masks": support_masks,
            "class_id": class_id,
            "episode_index": torch.tensor(index, dtype=torch.int64),
            "query_name": ds.describe(ep.query),
            "support_names": support_names,
        }
        if label_orig is not None:
            item["query_label_orig"] = label_orig
        if deferred:  # warps: supports in order, then the query
            shape = support_masks.shape[:-2]
            item["query"] = DeviceImages([item["query"]], ())
            item["support"] = DeviceImages([im for way in ([support] if self.n_way == 1 else support) for im in way], shape)
            item["query_affine"], item["query_blur"] = warps[-1]
            item["support_affine"] = torch.stack([m for m, _ in warps[:n_support]]).view(*shape, 2, 3)
            item["support_blur"] = torch.stack([b for _, b in warps[:n_support]]).view(*shape, 2)
        return item


# Per-item tensors whose sizes differ between items (original label sizes): kept as a list.
LIST_KEYS = frozenset({"query_label_orig"})


def collate_dicts(items: List[Dict]) -> Dict:
    """Stack tensors; keep ``LIST_KEYS`` tensors and everything else (names, paths) as plain lists."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) and key not in LIST_KEYS else vals
    return out


collate_episodes = collate_dicts
