"""DistillFSS's protocol (seed 000; github pasqualedem/DistillFSS) for ``SpecializeModule``: a
registered pooled benchmark, its supports chosen by a budget, its test part scored once per image."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Literal, Optional, Union

from ..benchmarks import pooled_benchmark
from ..episodes.distillfss_budget import select_support_budget, split_train_test
from ..readers.base import FewShotDataset
from .support_set import SupportSetDataModule


def read_pool(dataset: str, root: str, given: Dict[str, Any]) -> FewShotDataset:
    """The pooled benchmark ``dataset`` read from ``root`` in its published layout, with the module's
    reader arguments ``given`` (``READER_OPTIONS``) that differ from their defaults as the reader's
    own options (WeedMap's fields, Industrial's fold)."""
    reader = pooled_benchmark(dataset).reader
    params = inspect.signature(reader.__init__).parameters
    options = {}
    for arg, value in given.items():
        option, default = READER_OPTIONS[arg]
        if value != default:
            if option not in params:
                raise ValueError(f"--data.{arg} does not apply to {dataset!r}")
            options[option] = value
    return reader(root, **options)


# the readers' own options, as BudgetSpecializationDataModule arguments, with their defaults
READER_OPTIONS = {"industrial_fold": ("fold", None), "train_field": ("train_field", "000"),
                  "test_field": ("test_field", "003"), "remove_black_images": ("remove_black_images", False)}


class BudgetSpecializationDataModule(SupportSetDataModule):
    """DistillFSS's protocol for ``SpecializeModule``: a support set chosen from the training part by
    DistillFSS's budget K (``episodes.distillfss_budget.select_support_budget`` with the dataset's rule),
    the test part (the
    dataset's own, or ``split_train_test``'s seeded draw) scored once per image with the specialised
    model (and, with ``eval_teacher``, the episodic teacher conditioned on all the supports).

    Args:
        dataset: a registered ``PooledBenchmark``: ``kvasir`` | ``isic_distillfss`` | ``nucleus`` | ``pothole`` |
            ``weedmap`` | ``lung`` | ``industrial`` (``data_modules/benchmarks/``), or ``package.module:name``.
        root: the dataset folder in its published layout (see each reader / docs/protocols/distillfss.md).
        budget: DistillFSS's K (its ``prompt_images``): K images in all for kvasir / nucleus / pothole /
            weedmap / lung, ``K // 4`` per class for isic_distillfss (its class count includes the background),
            ``K // N`` per class for industrial's N classes.
        industrial_fold: industrial only: the fold (0-3) whose classes are kept, as the reference's runs
            do (``parameters/distill/Industrial.yaml:16``); None = all classes. (Not ``fold``: the CLI's
            default data module has a ``fold`` of its own, which would be carried over.)
        train_field / test_field: weedmap only: the field folders under ``root`` it trains on and
            tests on (the reference's ``000`` / ``003``, ``parameters/distill/WeedMap.yaml:14-15``).
        remove_black_images: weedmap only: drop the training tiles with more than 10 black pixels
            (``weedmap.py:54-65``; off in the reference's runs).
        test_fraction / split_seed: the drawn split, for datasets without one (80/20, seed 42).
        max_test_images: score only the first n test images (sorted by name; smoke runs), None = all.
        scoring_size: ``model`` (default: DistillFSS scores the S x S resized image and nearest-resized
            mask, ``distillfss/data/__init__.py:54-58``, ``kvasir.py:92-96``), an int or ``original``.
        image_size / repeats / augment / batch_size / num_workers / query_dir: as ``SpecializationDataModule``
            (image_size None: the model's, set by ``SpecializeModule``; the CLI sets None when a teacher
            checkpoint gives the size).
    """

    def __init__(self, dataset: str, root: str, budget: int = 5, industrial_fold: Optional[int] = None,
                 train_field: str = "000", test_field: str = "003", remove_black_images: bool = False,
                 test_fraction: float = 0.2, split_seed: int = 42,
                 max_test_images: Optional[int] = None, image_size: Optional[int] = 518, query_dir: Optional[str] = None,
                 repeats: int = 8, augment: bool = True, batch_size: int = 4, num_workers: int = 0,
                 scoring_size: Union[Literal["model", "original"], int] = "model") -> None:
        given = {"industrial_fold": industrial_fold, "train_field": train_field, "test_field": test_field,
                 "remove_black_images": remove_black_images}
        ds = read_pool(dataset, root, given)
        order = getattr(ds, "reference_order", None)
        # split over every image, then keep the reader's (Industrial's fold filters after its split,
        # industrial.py:66-78)
        universe = getattr(ds, "split_keys", None) or ds.all_keys()
        train, test = split_train_test(universe, test_fraction, split_seed, getattr(ds, "published_test", None),
                                       order=order)
        kept = set(ds.all_keys())
        train, test = [k for k in train if k in kept], [k for k in test if k in kept]
        train_set = set(train)
        by_class = {c: [k for k in ds.samples_by_class[c] if k in train_set] for c in ds.class_ids}
        support = ds.select_supports(by_class, budget) if hasattr(ds, "select_supports") else \
            select_support_budget(by_class, budget, getattr(ds, "budget_rule", "images"), order,
                                  getattr(ds, "budget_classes", None))
        own_class = {k: c for c in ds.class_ids for k in ds.samples_by_class[c]}
        test = test[:max_test_images] if max_test_images else test
        super().__init__(ds, {c: support[c] for c in ds.class_ids}, [(k, own_class[k]) for k in test],
                         image_size=image_size, repeats=repeats, augment=augment, batch_size=batch_size,
                         num_workers=num_workers, scoring_size=scoring_size, query_dir=query_dir)
        self.save_hyperparameters()
        self.dataset_name, self.budget = dataset, budget
        self.train_keys, self.test_keys = train, test

    def selection_json(self) -> Dict[str, Any]:
        """The selected supports per class and the train / test ids (``fsseg episodes``)."""
        names = self.class_names
        return {"benchmark": self.dataset_name, "protocol": "distillfss-budget", "budget": self.budget,
                "budget_rule": getattr(self.dataset, "budget_rule", "images"), "class_names": names,
                "supports": {names[i]: list(self.support_keys[c]) for i, c in enumerate(self.class_ids)},
                "train": list(self.train_keys), "test": list(self.test_keys)}


__all__ = ["BudgetSpecializationDataModule", "READER_OPTIONS", "read_pool"]
