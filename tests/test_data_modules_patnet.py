"""PATNet's CD-FSS readers and episode drawing, on small trees written in the published layouts."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from PIL import Image

from data_modules import FSS1000, EpisodicDataModule, Pascal5i
from data_modules.benchmarks.chest_xray import ChestXray
from data_modules.benchmarks.deepglobe import DEEPGLOBE_CLASSES, Deepglobe
from data_modules.benchmarks.isic_patnet import ISIC
from data_modules.episodes.patnet import patnet_episode_list
from fsseg.registry import RegistryError
from tests.paths import CONFIGS
from tests.shared_data import GOLDEN as _GOLDEN
from tests.shared_data import SHARED as _SHARED

SHARED, GOLDEN = str(_SHARED), str(_GOLDEN)


def _jpg(path, size=(24, 20), value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _binary(size=(24, 20), grey_fg=255):
    m = np.zeros((size[1], size[0]), np.uint8)
    m[4:12, 5:15] = grey_fg
    return m


def write_deepglobe(root, per_class=(3, 4, 2, 3, 3, 2)):
    for c, n in enumerate(per_class, 1):
        for j in range(n):
            name = f"{100 + 7 * j}_{c}{j}"  # PATNet tile names: <image id>_<row><col>
            _jpg(os.path.join(root, str(c), "test", "origin", name + ".jpg"), value=c * 10 + j)
            m = _binary()
            _png(os.path.join(root, str(c), "test", "groundtruth", name + ".png"), np.stack([m] * 3, -1))
    return root


# ----------------------------------------------------------------------------------- readers
def test_deepglobe_reader_layout_classes_and_threshold(tmp_path):
    root = write_deepglobe(str(tmp_path / "Deepglobe"))
    # a grey mask with values 127/128: PATNet keeps >= 128 (data/deepglobe.py:73-77)
    m = np.zeros((20, 24), np.uint8)
    m[0, 0], m[0, 1], m[0, 2] = 127, 128, 200
    _png(os.path.join(root, "1", "test", "groundtruth", "100_10.png"), m)
    ds = Deepglobe(root)
    assert [ds.class_names[c] for c in ds.class_ids] == list(DEEPGLOBE_CLASSES)
    assert [len(ds.samples_by_class[c]) for c in ds.class_ids] == [3, 4, 2, 3, 3, 2]
    # keys: image paths relative to the root, in the order of PATNet's sorted glob
    assert ds.samples_by_class[1] == [os.path.relpath(p, root) for p in
                                      sorted(glob.glob(os.path.join(root, "2", "test", "origin", "*.jpg")))]
    assert ds.records["2/test/origin/100_20.jpg"] == (os.path.join(root, "2/test/origin/100_20.jpg"),
                                                      os.path.join(root, "2/test/groundtruth/100_20.png"))
    img, (mask,) = ds.load("1/test/origin/100_10.jpg", [0])
    assert img.shape == (20, 24, 3) and mask[0, :3].tolist() == [0, 1, 1] and mask.sum() == 2
    os.remove(os.path.join(root, "3", "test", "groundtruth", "100_30.png"))
    with pytest.raises(FileNotFoundError, match="100_30.png"):
        Deepglobe(root)


def test_deepglobe_reader_missing_class_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="1/test/origin"):
        Deepglobe(str(tmp_path))


def _write_isic(root, folders=((0, 1, 2), (3, 4), (5, 6, 7))):
    for k, ids in enumerate(folders, 1):
        for i in ids:
            name = f"ISIC_{i:07d}"
            _jpg(os.path.join(root, "ISIC2018_Task1-2_Training_Input", str(k), name + ".jpg"), value=i)
            _png(os.path.join(root, "ISIC2018_Task1_Training_GroundTruth", name + "_segmentation.png"), _binary())
    return root


def test_isic_reader_classes_from_class_id_csv(tmp_path):
    root = _write_isic(str(tmp_path / "ISIC"))
    ds = ISIC(root)
    assert [ds.class_names[c] for c in ds.class_ids] == ["1", "2", "3"]
    assert [len(ds.samples_by_class[c]) for c in ds.class_ids] == [3, 2, 3]
    key = ds.samples_by_class[1][0]
    assert key == "ISIC2018_Task1-2_Training_Input/2/ISIC_0000003.jpg"
    assert ds.records[key][1] == os.path.join(root, "ISIC2018_Task1_Training_GroundTruth/ISIC_0000003_segmentation.png")
    assert ds.load(key, [1])[1][0].sum() == 80
    diagnosis = ["nevus"] * 3 + ["melanoma"] * 2 + ["seborrheic_keratosis"] * 3
    with open(os.path.join(root, "class_id.csv"), "w") as f:
        f.write("ID,Class\n" + "".join(f"ISIC_{i:07d},{d}\n" for i, d in enumerate(diagnosis)))
    assert [ISIC(root).class_names[c] for c in range(3)] == ["nevus", "melanoma", "seborrheic_keratosis"]
    with open(os.path.join(root, "class_id.csv"), "a") as f:
        f.write("ISIC_9999999,nevus\n")
    with open(os.path.join(root, "class_id.csv")) as f:
        text = f.read().replace("ISIC_0000004,melanoma", "ISIC_0000004,nevus")
    with open(os.path.join(root, "class_id.csv"), "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match="mixes diagnoses"):
        ISIC(root)


def test_chest_xray_reader_pairs_masks_and_keeps_mask_order(tmp_path):
    root = str(tmp_path / "LungSegmentation")
    # Mask order differs from image order here: "A_1_mask.png" < "A_mask.png" but "A.png" < "A_1.png".
    for image_id, mask_name in (("A", "A_mask.png"), ("A_1", "A_1_mask.png"), ("MCU_3", "MCU_3.png")):
        g = np.full((20, 24), 90, np.uint8)
        _png(os.path.join(root, "CXR_png", image_id + ".png"), g)
        _png(os.path.join(root, "masks", mask_name), _binary())
    with open(os.path.join(root, "masks", "notes.txt"), "w") as f:
        f.write("not a mask")
    ds = ChestXray(root)
    assert ds.samples_by_class[0] == ["CXR_png/A_1.png", "CXR_png/A.png", "CXR_png/MCU_3.png"]
    img, (m,) = ds.load(ds.samples_by_class[0][1], [0])
    assert img.shape == (20, 24, 3) and (img[..., 0] == 90).all() and m.sum() == 80
    os.remove(os.path.join(root, "CXR_png", "A.png"))
    with pytest.raises(FileNotFoundError, match="A.png"):
        ChestXray(root)


# ----------------------------------------------------------------------------------- PATNet drawing
def _patnet_reference(pools, shots, num, seed=0):
    """PATNet's sample_episode loop, as data/deepglobe.py:79-90 writes it, on the global generator
    seeded as test.py:18 seeds it."""
    np.random.seed(seed)
    categories = list(pools)
    out = []
    for idx in range(num):
        cls = categories[idx % len(categories)]
        query = np.random.choice(pools[cls], 1, replace=False)[0]
        supports = []
        while True:
            s = np.random.choice(pools[cls], 1, replace=False)[0]
            if query != s:
                supports.append(s)
            if len(supports) == shots:
                break
        out.append((str(query), tuple(str(x) for x in supports), idx % len(categories)))
    return out


@pytest.mark.parametrize("shots", [1, 5])
def test_patnet_drawing_equals_patnet_loop_round_robin_and_counts(tmp_path, shots):
    ds = Deepglobe(write_deepglobe(str(tmp_path / "Deepglobe")))
    episodes = patnet_episode_list(ds, shots, seed=0)
    assert len(episodes) == 600
    assert [e.class_ids[0] for e in episodes[:13]] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0]
    pools = {c: ds.samples_by_class[c] for c in ds.class_ids}
    expected = _patnet_reference(pools, shots, 600)
    assert [(e.query, e.supports[0], e.class_ids[0]) for e in episodes] == expected
    for e in episodes:
        assert e.query not in e.supports[0] and len(e.supports[0]) == shots
        assert all(s in pools[e.class_ids[0]] for s in e.supports[0])
    assert patnet_episode_list(ds, shots, seed=0) == episodes  # deterministic
    assert patnet_episode_list(ds, shots, seed=1) != episodes
    assert len(patnet_episode_list(ds, shots, num_episodes=7)) == 7
    if shots == 5:  # PATNet draws supports with replacement: a 2-image class repeats its one support
        two = [e for e in episodes if e.class_ids[0] == 2]
        assert all(len(set(e.supports[0])) == 1 for e in two)


def _write_fss(root, classes=("b_cls", "a_cls", "c_cls")):
    for c in classes:
        for n in range(1, 11):
            _jpg(os.path.join(root, c, f"{n}.jpg"), value=n)
            _png(os.path.join(root, c, f"{n}.png"), _binary())
    return root


def test_patnet_drawing_fss1000_every_image_once(tmp_path):
    root = _write_fss(str(tmp_path / "FSS-1000"))
    ds = FSS1000(root, "test")
    episodes = patnet_episode_list(ds, 1, seed=0)
    assert len(episodes) == 30
    # data/fss.py:24,107-114: sorted categories, each class's sorted jpg names (1, 10, 2, ..., 9)
    expected_q = [f"{c}/{n}.jpg" for c in ("a_cls", "b_cls", "c_cls") for n in (1, 10, 2, 3, 4, 5, 6, 7, 8, 9)]
    assert [e.query for e in episodes] == expected_q
    np.random.seed(0)  # data/fss.py:89-94 on the generator test.py:18 seeds
    for e in episodes:
        while True:
            s = os.path.join(os.path.dirname(e.query), str(np.random.choice(range(1, 11), 1, replace=False)[0])) + ".jpg"
            if s != e.query:
                break
        assert e.supports[0] == (s,)
        assert ds.class_names[e.class_ids[0]] == os.path.basename(os.path.dirname(e.query))
    with pytest.raises(ValueError, match="every image once"):
        patnet_episode_list(ds, 1, num_episodes=600)
    os.remove(os.path.join(root, "a_cls", "7.png"))
    with pytest.raises(Exception, match="7.jpg"):
        patnet_episode_list(FSS1000(root, "test"), 5, seed=0)


def _empty_fss_tree(root, names):
    """FSS-1000 class folders of empty 1..10.jpg/png files: listing episodes opens no image."""
    for name in names:
        os.makedirs(os.path.join(root, name))
        for n in range(1, 11):
            for ext in ("jpg", "png"):
                open(os.path.join(root, name, f"{n}.{ext}"), "w").close()
    return root


def _fss_episodes(root, split_dir, protocol, shots):
    dm = EpisodicDataModule("fss1000", root=root, split_dir=split_dir, shots=shots, protocol=protocol)
    return dm.episode_list("test")


@pytest.mark.parametrize("shots", [1, 5])
def test_patnet_fss1000_list_equals_hsnet_list(tmp_path, shots):
    """PATNet's data/fss.py is HSNet's (only __init__'s use_original_imgsize argument differs), so the
    two protocols must draw the same FSS-1000 episodes; they are two implementations (patnet.py draws
    ``choice(range(1, 11))`` -> '<n>.jpg', protocols.HsnetProtocol indexes the class's images in
    numeric order), checked against each other here."""
    names = ["b_cls", "a_cls", "d_cls", "c_cls"]
    root = _empty_fss_tree(str(tmp_path / "fss"), names)
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for s, ns in (("trn", ["e_cls"]), ("val", ["f_cls"]), ("test", names)):
        (split_dir / f"{s}.txt").write_text("".join(n + "\r\n" for n in ns))
    patnet = _fss_episodes(root, str(split_dir), "patnet", shots)
    assert len(patnet) == 40 and patnet == _fss_episodes(root, str(split_dir), "hsnet", shots)
    assert [e.class_ids[0] for e in patnet[::10]] == [2, 3, 4, 5]  # 2 = offset of the test split, sorted names


@pytest.mark.shared_data
@pytest.mark.parametrize("shots", [1, 5])
def test_patnet_fss1000_list_equals_hsnet_golden_episodes(tmp_path, shots):
    """On the real 240 test classes: PATNet's list is HSNet's recorded list (../shared/protocol/golden)."""
    import json

    split_dir = os.path.join(SHARED, "splits", "fss")
    golden_file = os.path.join(GOLDEN, f"hsnet_fss_fold0_{shots}shot.json")
    if not (os.path.isfile(golden_file) and os.path.isdir(split_dir)):
        pytest.skip(f"reference episodes or FSS split lists not found under {SHARED} (set FSSEG_SHARED_DATA)")
    with open(os.path.join(split_dir, "test.txt")) as f:
        root = _empty_fss_tree(str(tmp_path / "fss"), f.read().split())
    with open(golden_file) as f:
        golden = json.load(f)["episodes"]
    patnet = _fss_episodes(root, split_dir, "patnet", shots)
    assert len(patnet) == len(golden) == 2400
    assert [(e.query, list(e.supports[0]), e.class_ids[0]) for e in patnet] == \
        [(g["query"], g["supports"], g["class_id"]) for g in golden]


def test_datamodule_protocol_patnet_loads_episodes(tmp_path):
    root = write_deepglobe(str(tmp_path / "Deepglobe"))
    dm = EpisodicDataModule(dataset="deepglobe", root=root, shots=1, image_size=56, batch_size=2,
                            test_episodes=600, protocol="patnet")
    dm.setup("test")
    assert len(dm.datasets["test"]) == 600
    assert dm.episode_list("test") == patnet_episode_list(Deepglobe(root), 1, 600, seed=0)
    batch = next(iter(dm.test_dataloader()))
    assert batch["query"].shape == (2, 3, 56, 56) and batch["class_id"].tolist() == [0, 1]
    assert set(batch["query_mask"].unique().tolist()) <= {0, 1}
    with pytest.raises(RegistryError, match="unknown episode protocol"):
        EpisodicDataModule(dataset="deepglobe", root=root, protocol="patnett")


def test_patnet_episode_file_names_are_root_relative(tmp_path):
    """An episode file written on one copy of the data evaluates the same episodes on another."""
    import json
    import shutil

    root = write_deepglobe(str(tmp_path / "Deepglobe"), per_class=(6,) * 6)
    dm = EpisodicDataModule(dataset="deepglobe", root=root, shots=5, test_episodes=20, protocol="patnet")
    data = dm.episodes_json("test")
    assert data["episodes"][0]["query"].startswith("1/test/origin/") and data["protocol"] == "patnet"
    (tmp_path / "episodes.json").write_text(json.dumps(data))
    moved = shutil.copytree(root, str(tmp_path / "elsewhere"))
    again = EpisodicDataModule(dataset="deepglobe", root=moved, shots=5, episodes_file=str(tmp_path / "episodes.json"))
    assert again.episode_list("test") == dm.episode_list("test")


def _write_pascal_lists(tmp_path, per_class=1):
    """HSNet-format lists, ``per_class`` images per (fold, class), and their 8x8 VOC files."""
    root = tmp_path / "VOC2012"
    lists = tmp_path / "lists"
    for split in ("trn", "val"):
        for fold in range(4):
            pairs = [(f"2008_{split}{fold}{c}{k}", 5 * fold + c + 1) for c in range(5) for k in range(per_class)]
            os.makedirs(lists / split, exist_ok=True)
            (lists / split / f"fold{fold}.txt").write_text("".join(f"{i}__{v}\n" for i, v in pairs))
            for i, v in pairs:
                _jpg(str(root / "JPEGImages" / f"{i}.jpg"), (8, 8))
                _png(str(root / "SegmentationClassAug" / f"{i}.png"), np.full((8, 8), v, np.uint8))
    return root, lists


def test_pascal_fold4_trains_on_all_twenty_classes(tmp_path):
    root, lists = _write_pascal_lists(tmp_path)
    for split in ("train", "val"):
        ds = Pascal5i(str(root), fold=4, split=split, list_dir=str(lists))
        assert ds.class_ids == list(range(20)) and all(len(ds.samples_by_class[c]) == 1 for c in range(20))
    assert Pascal5i(str(root), fold=0, split="train", list_dir=str(lists)).class_ids == list(range(5, 20))
    with pytest.raises(ValueError, match="fold must be"):
        Pascal5i(str(root), fold=5, list_dir=str(lists))


# ----------------------------------------------------------------------------------- configs
def _config(name):
    import yaml

    with open(os.path.join(CONFIGS, name)) as f:
        text = f.read()
    return text.splitlines()[0], yaml.safe_load(text)


def _datamodule_args(init_args, root):
    import inspect

    known = set(inspect.signature(EpisodicDataModule.__init__).parameters)
    assert set(init_args) <= known, set(init_args) - known
    return dict(init_args) | {"root": root, "num_workers": 0, "image_size": 56}


@pytest.mark.parametrize("shots", [1, 5])
def test_crossdomain_configs_build_patnet_episode_lists(tmp_path, shots):
    trees = {"deepglobe": write_deepglobe(str(tmp_path / "Deepglobe"), per_class=(6,) * 6),
             "isic": _write_isic(str(tmp_path / "ISIC"), folders=(range(0, 6), range(6, 12), range(12, 18))),
             "fss1000": _write_fss(str(tmp_path / "FSS-1000"))}
    lung = str(tmp_path / "Lung")
    for i in range(7):
        _png(os.path.join(lung, "CXR_png", f"CHNCXR_{i:04d}_0.png"), np.full((20, 24), 90, np.uint8))
        _png(os.path.join(lung, "masks", f"CHNCXR_{i:04d}_0_mask.png"), _binary())
    trees["chest_xray"] = lung
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for s, names in (("trn", []), ("val", []), ("test", ["b_cls", "a_cls", "c_cls"])):
        (split_dir / f"{s}.txt").write_text("".join(n + "\r\n" for n in names))  # HSNet's test.txt is CRLF
    datasets = {"isic": "isic_patnet"}  # crossdomain_isic.yaml reads PATNet's ISIC
    for name, n_episodes in (("deepglobe", 600), ("isic", 600), ("chest_xray", 600), ("fss1000", 30)):
        first, cfg = _config(f"crossdomain_{name}.yaml")
        assert first.startswith("# Protocol: patnet")
        args = cfg["data"]["init_args"]
        assert (args["dataset"], args["protocol"], args["shots"], args["seed"]) == \
            (datasets.get(name, name), "patnet", 1, 0)
        args["shots"] = shots  # --data.init_args.shots
        assert args["scoring_size"] == 400 and cfg["model"] == "base/model_full.yaml"
        args = _datamodule_args(args, trees[name])
        if name == "fss1000":
            assert args["mask_encoding"] == "threshold128"
            args["split_dir"] = str(split_dir)
        dm = EpisodicDataModule(**args)
        dm.setup("test")
        episodes = dm.episode_list("test")
        assert len(episodes) == n_episodes
        assert episodes == patnet_episode_list(dm.datasets["test"].dataset, shots, None, seed=0)


def test_pascal_source_config_trains_on_all_classes(tmp_path):
    first, cfg = _config("crossdomain_pascal_source.yaml")
    args = cfg["data"]["init_args"]
    assert first.startswith("# Protocol: patnet") and (args["fold"], args["protocol"]) == (4, "patnet")
    root, lists = _write_pascal_lists(tmp_path, per_class=2)
    dm = EpisodicDataModule(**_datamodule_args(args, str(root)) | {"split_dir": str(lists)})
    dm.setup("fit")
    train = dm.datasets["train"]
    # PATNet trains as HSNet (its data/pascal.py): every (image, class) pair of the four trn lists
    assert train.dataset.class_ids == list(range(20)) and len(train) == args["train_episodes_per_epoch"]
    assert sorted({train.episode(i).class_ids[0] for i in range(40)}) == list(range(20))  # one pass = 40 pairs
    assert len(dm.episode_list("val")) == 1000 and {e.class_ids[0] for e in dm.episode_list("val")} == set(range(20))


def test_fss1000_ood_configs_build_hsnet_lists(tmp_path):
    root = _empty_fss_tree(str(tmp_path / "fss"), ["b_cls", "a_cls"])
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for s, ns in (("trn", ["e_cls"]), ("val", ["f_cls"]), ("test", ["b_cls", "a_cls"])):
        (split_dir / f"{s}.txt").write_text("".join(n + "\n" for n in ns))
    _, coco = _config("coco20i_fsseg.yaml")
    for shots in (1, 5):
        first, cfg = _config("fss1000_ood_coco20i.yaml")
        assert first.startswith("# Protocol: hsnet")
        args = cfg["data"]["init_args"]
        assert (args["dataset"], args["protocol"], args["shots"], args["test_episodes"]) == ("fss1000", "hsnet", 1, 0)
        args["shots"] = shots  # --data.init_args.shots
        assert args["split_dir"] == "data/splits/fss"
        # the model block and input size are the COCO-20i fewshot configs', so their checkpoints load
        assert cfg["model"] == coco["model"] and args["image_size"] == coco["data"]["init_args"]["image_size"]
        dm = EpisodicDataModule(**_datamodule_args(args, root) | {"split_dir": str(split_dir)})
        episodes = dm.episode_list("test")
        assert sorted(e.query for e in episodes) == sorted(f"{c}/{n}.jpg" for c in ("a_cls", "b_cls") for n in range(1, 11))
        assert all(len(e.supports[0]) == shots for e in episodes)
        assert episodes == patnet_episode_list(dm.datasets["test"].dataset, shots, seed=0)


# ----------------------------------------------------------------------------------- real files


def test_isic_reader_on_real_dermoscopy_files(tmp_path, shared_data):
    """The five real ISIC/HAM10000 images of ../shared/data arranged in ISIC-2018's published names."""
    src = str(shared_data("cross-domain", "isic"))
    from data_modules import read_mask

    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(src, "images")) if f.endswith(".jpg"))
    root = tmp_path / "ISIC"
    os.makedirs(root / "ISIC2018_Task1_Training_GroundTruth")
    for k, folder_ids in enumerate((ids[0:2], ids[2:4], [ids[4], ids[0]]), 1):
        os.makedirs(root / "ISIC2018_Task1-2_Training_Input" / str(k))
        for i in folder_ids:
            os.symlink(os.path.join(src, "images", i + ".jpg"), root / "ISIC2018_Task1-2_Training_Input" / str(k) / (i + ".jpg"))
    for i in ids:
        os.symlink(os.path.join(src, "masks", i + ".png"), root / "ISIC2018_Task1_Training_GroundTruth" / f"{i}_segmentation.png")
    ds = ISIC(str(root))
    for key, (_, mask_path) in ds.records.items():
        img, (m,) = ds.load(key, [0])
        assert img.shape[:2] == (450, 600) and np.array_equal(m, read_mask(mask_path, "binary255"))
        assert 0.01 < m.mean() < 0.99
    dm = EpisodicDataModule(dataset="isic_patnet", root=str(root), shots=1, image_size=56, batch_size=3,
                            protocol="patnet", test_episodes=600)
    batch = next(iter(dm.test_dataloader()))
    assert batch["class_id"].tolist() == [0, 1, 2] and batch["query_mask"].float().mean() > 0.01
