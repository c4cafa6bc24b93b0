"""The support set of ``fsseg specialize``: a folder of your labelled images, or synthetic classes."""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple, Union

from ..readers.base import FewShotDataset
from ..readers.folder import FolderDataset
from ..readers.synthetic import SyntheticFewShot, novel_classes
from .support_set import SupportSetDataModule


class SpecializationDataModule(SupportSetDataModule):
    """Support set (+ augmentations) for training a ``SpecializeModule``; labelled queries
    (``val_dir``, or held-out synthetic images) for validation/test; ``query_dir`` for predict.
    Batch formats: ``support_set.py``.

    Args:
        support_dir: folder of supports (layouts of ``data_modules.FolderDataset``); None = synthetic.
        query_dir: images (folder or file) for ``fsseg predict``.
        val_dir: labelled queries (same class names as the supports; a single-class folder maps to
            the only class when N = 1).
        image_size: model input size (None: the model's ``image_size``, set by ``SpecializeModule``).
        shots: K per class (first K in sorted order); None = all available (smallest class count).
        mask_encoding: ``auto`` (detected per file) | ``index`` | ``binary255`` | ``binary01`` | ``rgb`` | ``jpeg``.
        synthetic_classes: number of classes of the synthetic fallback (novel classes of ``synthetic_fold``).
        synthetic_fold: fold whose novel classes the synthetic fallback uses.
        synthetic_queries: held-out synthetic images per class (validation/test).
        synthetic_seed: seed of the synthetic fallback.
        repeats: copies of each support per epoch (1 plain + repeats-1 augmented).
        scoring_size: where val/test queries are scored, as ``EpisodicDataModule.scoring_size``
            (``model`` | an int | ``original``; docs/protocols/scoring.md).
        augment: augment the repeated supports.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        skip_bad_queries: ``predict``: skip unreadable photos (listed in ``summary.json``) instead of
            stopping at the first.
    """

    def __init__(self, support_dir: Optional[str] = None, query_dir: Optional[str] = None,
                 val_dir: Optional[str] = None, image_size: Optional[int] = None, shots: Optional[int] = None,
                 mask_encoding: str = "auto", synthetic_classes: int = 2, synthetic_fold: int = 0,
                 synthetic_queries: int = 4, synthetic_seed: int = 0, repeats: int = 8, augment: bool = True,
                 batch_size: int = 4, num_workers: int = 0, scoring_size: Union[Literal["model", "original"], int] = "model",
                 skip_bad_queries: bool = False) -> None:
        query_reader: Optional[FewShotDataset] = None
        queries: List[Tuple[str, int]] = []
        if support_dir:
            ds: FewShotDataset = FolderDataset(support_dir, mask_encoding=mask_encoding)
            counts = {c: len(ds.samples_by_class[c]) for c in ds.class_ids}
            k = shots or min(counts.values())
            few = {ds.class_names[c]: n for c, n in counts.items() if n < k}
            if few or k < 1:
                raise ValueError(f"support folder {support_dir!r}: classes with fewer than K={k} images: {few}")
            support_keys = {c: ds.samples_by_class[c][:k] for c in ds.class_ids}
            if val_dir:
                query_reader = FolderDataset(val_dir, mask_encoding=mask_encoding)
                queries = [(key, c) for c in query_reader.class_ids for key in query_reader.samples_by_class[c]]
        else:
            k = shots or 1
            classes = novel_classes(synthetic_fold)[:synthetic_classes]
            ds = SyntheticFewShot(fold=synthetic_fold, split="test", seed=synthetic_seed, image_size=image_size or 518,
                                  images_per_class=k + synthetic_queries, classes=classes)
            support_keys = {c: ds.samples_by_class[c][:k] for c in classes}
            queries = [(key, c) for c in classes for key in ds.samples_by_class[c][k:]]
        super().__init__(ds, support_keys, queries, query_reader, image_size=image_size, repeats=repeats,
                         augment=augment, batch_size=batch_size, num_workers=num_workers, scoring_size=scoring_size,
                         query_dir=query_dir, skip_bad_queries=skip_bad_queries)
        self.save_hyperparameters()
