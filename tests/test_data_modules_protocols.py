"""Episode protocols (data_modules.protocols): the reference test episodes, the field's training lists, episode files,
worker/rank independence. Tests on the real split lists skip when ../shared is absent."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules import EpisodicDataModule, Pascal5i
from data_modules.benchmarks.coco20i import read_pool_pickle
from data_modules.benchmarks.pascal5i import read_class_file_dict
from data_modules.episodes.protocols import HDMNET_SEEDS, PROTOCOLS
from fsseg.registry import RegistryError
from tests.cli_utils import csv_logger, run_fsseg
from tests.paths import CONFIGS
from tests.shared_data import GOLDEN, SHARED

SPLITS = SHARED / "splits"
needs_splits = pytest.mark.skipif(not (SPLITS / "pascal").is_dir(),
                                  reason=f"split lists not found at {SPLITS} (set FSSEG_SHARED_DATA)")
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir() or not (SPLITS / "pascal").is_dir(),
                                  reason=f"reference episodes not found at {GOLDEN} (../shared/protocol)")


def _episodes(data: dict) -> list:
    return [{k: e[k] for k in ("query", "supports", "class_id")} for e in data["episodes"]]


# ------------------------------------------------------------------------- HSNet's own episodes
@needs_golden
@pytest.mark.parametrize("fold", [0, 1, 2, 3])
@pytest.mark.parametrize("shots", [1, 5])
def test_hsnet_pascal_episodes_equal_golden(tmp_path, fold, shots):
    """Root without images: listing episodes reads only the split lists."""
    dm = EpisodicDataModule("pascal5i", root=str(tmp_path / "no-images"), fold=fold, shots=shots,
                            split_dir=str(SPLITS / "pascal"), protocol="hsnet")
    golden = json.loads((GOLDEN / f"hsnet_pascal_fold{fold}_{shots}shot.json").read_text())
    mine = dm.episodes_json("test")
    assert mine["n_episodes"] == golden["n_episodes"] == 1000
    assert _episodes(mine) == _episodes(golden)


def _empty_fss_tree(root: Path) -> None:
    for name in (SPLITS / "fss" / "test.txt").read_text().split():
        (root / name).mkdir(parents=True)
        for i in range(1, 11):
            (root / name / f"{i}.jpg").touch()
            (root / name / f"{i}.png").touch()


@pytest.mark.slow
@needs_golden
def test_hsnet_fss_episodes_equal_golden_via_cli(tmp_path):
    """FSS-1000 class folders holding empty 1..10.jpg/png files; 5-shot through `fsseg episodes` (the
    YAML says 1-shot, ``--data.init_args.shots 5`` overrides it as in every other command)."""
    _empty_fss_tree(tmp_path / "fss")
    init = {"dataset": "fss1000", "root": str(tmp_path / "fss"), "split_dir": str(SPLITS / "fss"), "protocol": "hsnet"}
    cfg = tmp_path / "data.yaml"
    cfg.write_text(json.dumps({"class_path": "data_modules.EpisodicDataModule", "init_args": {**init, "shots": 1}}))
    run_fsseg(["episodes", "--data", str(cfg), "--data.init_args.shots", "5", "--split", "test",
               "--output", str(tmp_path / "fss5.json")], cwd=tmp_path)
    for shots in (1, 5):
        mine = (json.loads((tmp_path / "fss5.json").read_text()) if shots == 5
                else EpisodicDataModule(**init, shots=1).episodes_json("test"))
        golden = json.loads((GOLDEN / f"hsnet_fss_fold0_{shots}shot.json").read_text())
        assert mine["n_episodes"] == golden["n_episodes"] == 2400
        assert _episodes(mine) == _episodes(golden)
        assert [e["class_name"] for e in mine["episodes"]] == [e["class_name"] for e in golden["episodes"]]


@needs_splits
def test_hsnet_coco_episodes_from_pickled_pools(tmp_path):
    """HSNet's COCO draw (data/coco.py:84-99) from its pools: class uniform, then the query, then K
    supports with replacement, one legacy RandomState(0) -- re-derived here step by step."""
    dm = EpisodicDataModule("coco20i", root=str(tmp_path), fold=1, shots=5, split_dir=str(SPLITS / "coco"),
                            protocol="hsnet")
    eps = dm.episodes_json("test")["episodes"]
    assert len(eps) == 1000
    pools = read_pool_pickle(str(SPLITS / "coco" / "val" / "fold1.pkl"))
    classes = list(range(1, 80, 4))
    rs = np.random.RandomState(0)
    for e in eps[:200]:
        c = classes[rs.choice(len(classes), 1, replace=False)[0]]
        q = pools[c][rs.choice(len(pools[c]), 1, replace=False)[0]]
        sup = []
        while len(sup) < 5:
            s = pools[c][rs.choice(len(pools[c]), 1, replace=False)[0]]
            if s != q:
                sup.append(s)
        assert e == {**e, "query": q, "supports": sup, "class_id": c}
    counts = np.bincount([e["class_id"] for e in eps], minlength=80)[classes]
    assert counts.min() >= 25 and counts.max() <= 80  # uniform over classes (~50 each), not over images
    assert all(e["query"].startswith("val2014/COCO_val2014_") for e in eps)


def test_pool_pickle_and_class_dict_never_execute_code(tmp_path):
    good = tmp_path / "fold0.pkl"
    good.write_bytes(pickle.dumps({0: ["val2014/a.jpg", "val2014/b.jpg"], 4: []}))
    assert read_pool_pickle(str(good)) == {0: ["val2014/a.jpg", "val2014/b.jpg"], 4: []}
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({0: [Evil()]}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing to load global"):
        read_pool_pickle(str(bad))
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps({"person": ("a.jpg",)}))
    with pytest.raises(ValueError, match="odd.pkl: expected a dict"):
        read_pool_pickle(str(odd))
    lst = tmp_path / "sub_class_file_list_0.txt"
    lst.write_text(f"{{1: [('x/JPEGImages/a.jpg', 'x/b.png')], 2: [__import__('os').mkdir({str(marker)!r})]}}")
    with pytest.raises(ValueError, match="not a Python dict literal"):
        read_class_file_dict(str(lst))
    assert not marker.exists()


# ------------------------------------------------------------------------- the field's training lists
@needs_splits
def test_pascal_training_pairs_from_the_real_lists(tmp_path):
    """Fold i trains on trn/fold{j} for every j != i (HSNet data/pascal.py:127-131)."""
    counts = []
    for fold in range(4):
        ds = Pascal5i(str(tmp_path), fold, "train", list_dir=str(SPLITS / "pascal"))
        novel = set(range(5 * fold, 5 * fold + 5))
        assert ds.list_pairs and not {c for _, c in ds.list_pairs} & novel
        assert all(len(ds.samples_by_class[c]) > 0 for c in ds.class_ids)
        counts.append(len(ds.list_pairs))
    lines = [len((SPLITS / "pascal" / "trn" / f"fold{j}.txt").read_text().split()) for j in range(4)]
    assert counts == [sum(lines) - lines[f] for f in range(4)] == [11394, 10255, 7797, 11594]


@needs_splits
def test_bam_lists_read_to_the_published_counts(tmp_path):
    for fold, (n_train, n_val) in enumerate([(4208, 364), (3726, 445), (2752, 592), (4510, 336)]):
        train = Pascal5i(str(tmp_path), fold, "train", list_dir=str(SPLITS / "bam" / "pascal"))
        val = Pascal5i(str(tmp_path), fold, "test", list_dir=str(SPLITS / "bam" / "pascal" / "fss_list"))
        assert (len(train.records), len(val.records)) == (n_train, n_val)
        assert {c for _, c in train.list_pairs} <= set(train.class_ids)
        assert {c for _, c in val.list_pairs} == set(range(5 * fold, 5 * fold + 5))
    dm = EpisodicDataModule("pascal5i", root=str(tmp_path), fold=0, split_dir=str(SPLITS / "bam" / "pascal"),
                            protocol="hdmnet", train_episodes_per_epoch=None, test_episodes=1000)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4208  # one epoch = one pass over the filtered training images
    dm.setup("test")
    test = dm.datasets["test"].episodes
    assert len(test) == 10 * 1000 and dm.eval_seeds == list(HDMNET_SEEDS)
    assert [e.seed_index for e in test[::1000]] == list(range(10))
    first = [e.query for e in test[:364]]
    assert first == list(dict.fromkeys(first)) and [e.query for e in test[364:728]] == first  # list order, cycling
    assert all(len(set(e.supports[0])) == 1 and e.query not in e.supports[0] for e in test)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_bam_area_rule_on_a_generated_tree(tmp_path):
    """PFENet-format lists; classes kept and dropped worked out by hand from BAM's rule
    (util/dataset.py:24-80): >= 2048 pixels at original size; a training image holding any
    test-fold class (fold 0: VOC values 1-5), of any size, is dropped."""
    root = tmp_path / "VOC2012"
    def mask(*regions, fill=0):
        m = np.full((64, 64), fill, np.uint8)
        for rows, cols, value in regions:
            m[rows, cols] = value
        return m

    every = slice(None)
    masks = {
        "a": mask((slice(0, 32), every, 6)),                                          # 2048 px of 6
        "b": mask((slice(0, 32), every, 6), (0, 0, 0)),                               # 2047 px of 6
        "c": mask((slice(0, 48), every, 6), (60, slice(0, 10), 1)),                   # 6 + 10 px of novel 1
        "d": mask((slice(0, 32), every, 1), (slice(40, 50), slice(0, 10), 7)),        # 2048 px of 1 + 100 of 7
        "e": mask((slice(0, 32), every, 8), (slice(32, 63), every, 7), (63, every, 255)),  # 8: 2048, 7: 1984
        "f": mask((slice(0, 40), every, 0), fill=255),                                # nothing
    }
    for name, m in masks.items():
        _save(root / "SegmentationClassAug" / f"{name}.png", m)
    lines = "".join(f"JPEGImages/{n}.jpg SegmentationClassAug/{n}.png\n" for n in masks)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "voc_sbd_merge_noduplicate.txt").write_text(lines)
    (tmp_path / "lists" / "val.txt").write_text(lines)
    dm = EpisodicDataModule("pascal5i", root=str(root), split_dir=str(tmp_path / "lists"), protocol="hdmnet")
    train, test = dm._fewshot("train"), dm._fewshot("test")
    assert train.list_pairs == [("a", 5), ("e", 7)]  # b too small, c/d hold class 1, e's 7 has 1984 px
    assert test.list_pairs == [("d", 0)]  # c's 10 px of class 1 do not count
    plain = EpisodicDataModule("pascal5i", root=str(root), split_dir=str(tmp_path / "lists"))._fewshot("train")
    assert plain.list_pairs == [("a", 5), ("b", 5), ("c", 5), ("d", 6), ("e", 6), ("e", 7)]


# ------------------------------------------------------------------------- a small VOC tree
def _voc_tree(tmp_path: Path, bad: str = "") -> tuple:
    """64x64 images, 3 train + 3 val images per VOC class, one object each (2304 px); lists in the
    real formats: HSNet's trn/val fold files (own classes per fold) and PFENet's."""
    root, lists = tmp_path / "VOC2012", tmp_path / "lists"
    rng = np.random.default_rng(0)
    hs = {(s, j): [] for s in ("trn", "val") for j in range(4)}
    pf = {"trn": [], "val": []}
    for c in range(1, 21):
        for s in ("trn", "val"):
            for k in range(3):
                img_id = f"20{10 if s == 'trn' else 11}_{c:03d}{k}"
                _save(root / "JPEGImages" / f"{img_id}.jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                m = np.zeros((64, 64), np.uint8)
                m[8:56, 8:56] = c
                m[7, 8:56] = 255
                _save(root / "SegmentationClassAug" / f"{img_id}.png", m)
                hs[(s, (c - 1) // 5)].append(f"{img_id}__{c:02d}")
                pf[s].append(f"JPEGImages/{img_id}.jpg SegmentationClassAug/{img_id}.png")
    for (s, j), rows in hs.items():
        (lists / "hsnet" / s).mkdir(parents=True, exist_ok=True)
        (lists / "hsnet" / s / f"fold{j}.txt").write_text("\n".join(rows) + "\n")
    (lists / "pfenet").mkdir()
    (lists / "pfenet" / "voc_sbd_merge_noduplicate.txt").write_text("\n".join(pf["trn"]) + "\n")
    (lists / "pfenet" / "val.txt").write_text("\n".join(pf["val"]) + "\n")
    if bad:
        (root / "JPEGImages" / f"{bad}.jpg").write_bytes(b"not a jpeg")
    return root, lists


def _loaded(dm, split, workers, rank, world):
    dm.num_workers = workers
    out = {}
    for b in dm.episode_dataloader(split, rank=rank, world_size=world):
        for i, idx in enumerate(b["episode_index"].tolist()):
            out[idx] = (b["query_name"][i], tuple(b["support_names"][i]), int(b["class_id"][i]), b["eval_seed"][i])
    return out


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_episode_lists_independent_of_workers_and_ranks(tmp_path, protocol):
    """Same episodes with 0/2 workers and 1/2 processes, also when skip_bad_samples replaces a bad file."""
    root, lists = _voc_tree(tmp_path, bad="2011_0010")
    split_dir = lists / ("pfenet" if protocol == "hdmnet" else "hsnet")
    dm = EpisodicDataModule("pascal5i", root=str(root), split_dir=str(split_dir), protocol=protocol, shots=2,
                            image_size=32, batch_size=3, test_episodes=7, skip_bad_samples=True)
    with pytest.warns(UserWarning, match="skip_bad_samples"):
        single = _loaded(dm, "test", 0, 0, 1)
    n = len(dm.datasets["test"])
    assert sorted(single) == list(range(n)) and n == 7 * len(dm.eval_seeds)
    assert not any("2011_0010" in q or any("2011_0010" in s for s in sup) for q, sup, _, _ in single.values())
    listed = dm.episode_list("test")
    untouched = [i for i, e in enumerate(listed) if "2011_0010" not in (e.query, *e.supports[0])]
    assert len(untouched) < n and all(single[i][0].endswith(listed[i].query + ".jpg") for i in untouched)
    for workers in (0, 2):
        split = {**_loaded(dm, "test", workers, 0, 2), **_loaded(dm, "test", workers, 1, 2)}
        assert split == single


def test_validation_is_not_the_test_unless_asked(tmp_path):
    root, lists = _voc_tree(tmp_path)
    kw = dict(root=str(root), split_dir=str(lists / "hsnet"), shots=1, test_episodes=40, val_episodes=40)
    dm = EpisodicDataModule("pascal5i", **kw)
    assert dm.episode_list("val") != dm.episode_list("test")
    ref = EpisodicDataModule("pascal5i", val_on_test=True, **kw)
    with pytest.warns(UserWarning, match="val_on_test: validating on the TEST episodes"):
        ref.setup("fit")
    assert ref.episode_list("val") == dm.episode_list("test")


def test_one_pass_epochs(tmp_path):
    root, lists = _voc_tree(tmp_path)
    lengths = {}
    for protocol, sub in (("fsseg", "hsnet"), ("hsnet", "hsnet"), ("hdmnet", "pfenet")):
        dm = EpisodicDataModule("pascal5i", root=str(root), split_dir=str(lists / sub), protocol=protocol,
                                train_episodes_per_epoch=None)
        dm.setup("fit")
        ds = dm.datasets["train"]
        lengths[protocol] = len(ds)
        queries = [ds.episode(i).query for i in range(len(ds))]
        assert sorted(queries) == sorted(k for k, _ in ds.dataset.list_pairs) or protocol == "fsseg"
        assert all(c in ds.dataset.class_ids for i in range(len(ds)) for c in ds.episode(i).class_ids)
    assert lengths == {"fsseg": 45, "hsnet": 45, "hdmnet": 45}  # 15 base classes x 3 training images


@pytest.mark.slow
def test_fit_then_test_on_an_episodes_file(tmp_path, tiny_fewshot):
    """`fsseg fit` from the real-format lists on a small VOC tree, then `fsseg test` with
    data.episodes_file: the test evaluates exactly the file's episodes."""
    root, lists = _voc_tree(tmp_path)
    cfg = str(CONFIGS / "pascal5i_fsseg.yaml")
    data = ["--data.init_args.root", str(root), "--data.init_args.split_dir", str(lists / "hsnet"),
            "--data.init_args.batch_size", "2", "--data.init_args.train_episodes_per_epoch", "4",
            "--data.init_args.val_episodes", "2", "--trainer.enable_progress_bar", "false"]
    fit_dir = tmp_path / "fit"
    run_fsseg(["fit", "--config", cfg, *tiny_fewshot, *data, "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(fit_dir), *csv_logger(fit_dir),
               "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{fit_dir / "ckpt"}", "save_last": true}}}}]'], cwd=tmp_path)
    ep_file = tmp_path / "episodes.json"  # a list another protocol and seed drew (`fsseg episodes` writes the same)
    ep_file.write_text(json.dumps(EpisodicDataModule("pascal5i", root=str(root), split_dir=str(lists / "hsnet"),
                                                     protocol="hsnet", test_episodes=9, seed=3).episodes_json("test")))
    expected = json.loads(ep_file.read_text())["episodes"]
    record = tmp_path / "seen"
    run_fsseg(["test", "--config", cfg, *tiny_fewshot, *data, "--data.init_args.episodes_file", str(ep_file),
               "--ckpt_path", str(fit_dir / "ckpt" / "last.ckpt"), "--trainer.default_root_dir", str(fit_dir),
               *csv_logger(tmp_path / "test"), "--trainer.callbacks",
               f'[{{"class_path": "tests.episode_recorder.RecordTestEpisodes", "init_args": {{"path": "{record}"}}}}]'],
              cwd=tmp_path)
    seen = sorted((json.loads(line) for line in Path(f"{record}.rank0").read_text().splitlines()),
                  key=lambda r: r["episode_index"])
    assert [r["episode_index"] for r in seen] == list(range(9))
    assert [(r["query"], r["supports"], r["class_id"]) for r in seen] == [
        (e["query"] + ".jpg", [s + ".jpg" for s in e["supports"]], e["class_id"]) for e in expected]


def test_bad_protocol_inputs_are_named(tmp_path):
    root, lists = _voc_tree(tmp_path)
    with pytest.raises(RegistryError, match="unknown episode protocol 'hdmnett'.*registered"):
        EpisodicDataModule("pascal5i", root=str(root), protocol="hdmnett")
    with pytest.raises(ValueError, match="'hdmnet' cannot use HSNet's lists"):
        EpisodicDataModule("pascal5i", root=str(root), split_dir=str(lists / "hsnet"), protocol="hdmnet").setup("test")
    with pytest.raises(ValueError, match="defines 1-way episodes only"):
        EpisodicDataModule("pascal5i", root=str(root), split_dir=str(lists / "hsnet"), protocol="hsnet",
                           n_way=2).setup("test")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"episodes": [{"query": "2011_0010", "supports": ["2099_0000"], "class_id": 0}]}))
    with pytest.raises(ValueError, match=r"bad.json.*episode 0 names '2099_0000'"):
        EpisodicDataModule("pascal5i", root=str(root), split_dir=str(lists / "hsnet"),
                           episodes_file=str(bad)).setup("test")


def test_episodes_file_of_another_fold_or_shot_is_refused(tmp_path):
    """An episode list written for 1-shot is refused under a 5-shot config (it would be reported as
    5-shot), in one line naming the file and both flags; so is one of another benchmark, unless
    force_episodes_file."""
    root, lists = _voc_tree(tmp_path)
    common = dict(root=str(root), split_dir=str(lists / "hsnet"), protocol="hsnet")
    ep_file = tmp_path / "fold0_1shot.json"
    ep_file.write_text(json.dumps(EpisodicDataModule("pascal5i", test_episodes=4, **common).episodes_json("test")))
    with pytest.raises(ValueError, match=r"fold0_1shot.json' is for shots 1 but the data config says shots 5: "
                                         r"set --data.init_args.shots to match, or --data.init_args.force_episodes_file"):
        EpisodicDataModule("pascal5i", shots=5, episodes_file=str(ep_file), **common).setup("test")
    header = json.loads(ep_file.read_text())
    header.update(benchmark="coco")
    (tmp_path / "coco.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="is for benchmark coco20i but the data config says benchmark pascal5i"):
        EpisodicDataModule("pascal5i", episodes_file=str(tmp_path / "coco.json"), **common).setup("test")
    forced = EpisodicDataModule("pascal5i", episodes_file=str(tmp_path / "coco.json"), force_episodes_file=True,
                                **common)
    forced.setup("test")
    assert len(forced.datasets["test"]) == 4
    ok = EpisodicDataModule("pascal5i", episodes_file=str(ep_file), **common)  # the file's own fold and shots
    ok.setup("test")
    assert len(ok.datasets["test"]) == 4
