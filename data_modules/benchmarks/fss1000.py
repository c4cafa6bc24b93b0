"""FSS-1000 (as HSNet's data/fss.py): ``root/<class>/<N>.jpg|png`` with the trn/val/test class lists."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from ..readers.base import FileFewShotDataset, stem
from ..readers.layout import SPLIT_ALIASES, pair_folder, read_lines, single_class_dirs
from .benchmark import BENCHMARKS, EpisodicBenchmark, ReaderSettings


class FSS1000(FileFewShotDataset):
    """FSS-1000: ``root/<class>/<N>.jpg`` + ``root/<class>/<N>.png`` (binary masks, any encoding).

    ``split_dir`` holds ``trn.txt``/``val.txt``/``test.txt`` (520/240/240 class names); as in HSNet
    (data/fss.py:22-24, 98-104) each split's names are sorted and class ids are the split's offset
    (0 / 520 / 760) + the sorted index. Without ``split_dir`` all class folders found are used for every
    split (sorted; ids = positions). Sample keys are ``<class>/<N>.jpg`` (the names HSNet's episodes
    use), each class's keys in plain string order (``1.jpg, 10.jpg, 2.jpg, ...``, data/fss.py:107-113).
    Also accepts the single-class layout ``root/support/image/*.jpg`` + ``root/support/label/*.png``
    (class name = ``class_name`` or the folder name).
    """

    name = "fss1000"

    def __init__(self, root: str, split: str = "test", split_dir: Optional[str] = None,
                 mask_encoding: str = "auto", class_name: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        self.root, self.split = root, SPLIT_ALIASES[split]
        if not os.path.isdir(root):
            raise FileNotFoundError(f"FSS-1000 root {root!r} does not exist")
        single = single_class_dirs(root)
        if single is not None:
            cname = class_name or os.path.basename(os.path.normpath(root))
            self.class_names = {0: cname}
            self.class_ids = [0]
            recs = pair_folder(*single)
            self.records = recs
            self.samples_by_class = {0: sorted(recs)}
            return
        if split_dir:
            all_names: List[str] = []
            split_names: Dict[str, List[str]] = {}
            for s in ("trn", "val", "test"):
                p = os.path.join(split_dir, f"{s}.txt")
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"FSS-1000 split file {p!r} not found")
                split_names[s] = sorted(read_lines(p))
                all_names += split_names[s]
            wanted = split_names[self.split]
        else:
            all_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            wanted = all_names
        ids = {n: i for i, n in enumerate(all_names)}
        self.class_names = dict(enumerate(all_names))
        missing = [n for n in wanted if not os.path.isdir(os.path.join(root, n))]
        if missing:
            raise FileNotFoundError(f"FSS-1000: {len(missing)} class folder(s) of split {self.split!r} missing "
                                    f"under {root!r}, e.g. {missing[:5]}")
        self.class_ids = [ids[n] for n in wanted]
        self.samples_by_class = {}
        for n in wanted:
            folder = os.path.join(root, n)
            files = sorted(os.listdir(folder))
            pngs = {stem(f): os.path.join(folder, f) for f in files if f.lower().endswith(".png")}
            keys = []
            for f in files:
                if f.lower().endswith((".jpg", ".jpeg")) and stem(f) in pngs:
                    key = f"{n}/{f}"
                    self.records[key] = (os.path.join(folder, f), pngs[stem(f)])
                    keys.append(key)
            self.samples_by_class[ids[n]] = keys


@BENCHMARKS.register("fss1000", aliases=("fss",))  # "fss": HSNet's name, in its episode files
class FSS1000Benchmark(EpisodicBenchmark):
    has_folds = False  # one class split (trn/val/test lists)
    hsnet_draw = "numeric_supports"
    every_image_by_default = True

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> FSS1000:
        return FSS1000(settings.root, split, split_dir=settings.split_dir, mask_encoding=settings.mask_encoding)
