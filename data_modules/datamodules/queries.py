"""Query photos of any size to segment (``fsseg predict``), unreadable ones skipped on request."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch.utils.data import Dataset

from ..episodes.dataset import collate_dicts
from ..image_io import BadSampleError, exif_orientation, read_image
from ..transforms import image_to_tensor, resize_image


class QueryImages(Dataset):
    def __init__(self, paths: List[str], image_size: int, skip_bad: bool = False) -> None:
        self.paths, self.image_size, self.skip_bad = paths, image_size, skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            img = read_image(self.paths[index])
        except BadSampleError as e:
            if not self.skip_bad:
                raise BadSampleError(e.path, f"{e.reason} (--skip_bad_queries true skips unreadable photos and "
                                             "lists them in summary.json)") from e
            return {"bad_query": (self.paths[index], e.reason)}
        h, w = img.shape[:2]
        return {"query": image_to_tensor(resize_image(img, self.image_size)),
                "query_original_size": torch.tensor([h, w], dtype=torch.int64),
                "query_path": self.paths[index], "index": torch.tensor(index, dtype=torch.int64),
                "exif_orientation": exif_orientation(self.paths[index])}


def collate_queries(items: List[Dict]) -> Dict:
    """``collate_dicts`` of the readable queries; unreadable ones (skip mode) listed in
    ``skipped_queries`` (``[(path, reason)]``); a batch of only those has ``query [0,3,S,S]``."""
    good = [it for it in items if "bad_query" not in it]
    skipped = [it["bad_query"] for it in items if "bad_query" in it]
    if good:
        batch = collate_dicts(good)
    else:
        batch = {"query": torch.zeros(0, 3, 1, 1), "query_original_size": torch.zeros(0, 2, dtype=torch.int64),
                 "query_path": [], "index": torch.zeros(0, dtype=torch.int64), "exif_orientation": []}
    batch["skipped_queries"] = skipped
    return batch
