"""`fsseg prepare`: COCO-20i masks from instances JSON, SegmentationClassAug from VOC + SBD .mat,
PATNet's Deepglobe tiles; expected outputs worked out by hand on tiny generated inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from data_modules import Coco20i
from data_modules.benchmarks.coco20i import prepare_coco20i
from data_modules.benchmarks.deepglobe import Deepglobe, prepare_deepglobe
from data_modules.benchmarks.pascal5i import prepare_pascal5i
from fsseg.prepare import main

# COCO's 80 category ids (1..90 without these ten), written in shuffled order in the JSON.
COCO_MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros)."""
    flat = mask.T.reshape(-1)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _rect(h, w, rows, cols):
    m = np.zeros((h, w), np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def _write_instances(path, split):
    ids = [i for i in range(1, 91) if i not in COCO_MISSING_IDS]
    cats = [{"id": i, "name": f"cat{i}", "supercategory": "x"} for i in reversed(ids)]
    h, w = 8, 10
    images = [{"id": n, "file_name": f"COCO_{split}_{n:012d}.jpg", "height": h, "width": w} for n in (7, 3, 11)]
    anns = [
        # image 7: A (category 1 -> value 1), then B (category 13 -> value 12) over it, then a crowd
        # region (category 90 -> value 80) that must stay out. File order, not annotation id, decides.
        {"id": 50, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": _rle(_rect(h, w, (0, 4), (0, 6))),
         "area": 24, "bbox": [0, 0, 6, 4]},
        {"id": 20, "image_id": 7, "category_id": 13, "iscrowd": 0, "segmentation": _rle(_rect(h, w, (2, 6), (3, 9))),
         "area": 24, "bbox": [3, 2, 6, 4]},
        {"id": 60, "image_id": 7, "category_id": 90, "iscrowd": 1, "segmentation": _rle(_rect(h, w, (5, 8), (0, 10))),
         "area": 30, "bbox": [0, 5, 10, 3]},
        # image 3: only a crowd region -> all background
        {"id": 61, "image_id": 3, "category_id": 1, "iscrowd": 1, "segmentation": _rle(_rect(h, w, (0, 8), (0, 10))),
         "area": 80, "bbox": [0, 0, 10, 8]},
        # image 11: a polygon (category 2 -> value 2)
        {"id": 70, "image_id": 11, "category_id": 2, "iscrowd": 0, "segmentation": [[1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]],
         "area": 35, "bbox": [1, 1, 7, 5]},
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def test_prepare_coco20i_overlaps_crowd_and_restart(tmp_path, capsys, monkeypatch):
    src, dst = tmp_path / "annotations", tmp_path / "COCO2014"
    for split in ("train2014", "val2014"):
        _write_instances(str(src / f"instances_{split}.json"), split)
    s = prepare_coco20i(str(src), str(dst), quiet=True)
    assert s["written"] == 6 and s["skipped"] == 0
    got = np.asarray(Image.open(dst / "annotations" / "val2014" / "COCO_val2014_000000000007.png"))
    expected = np.zeros((8, 10), np.uint8)
    expected[0:4, 0:6] = 1     # A
    expected[2:6, 3:9] = 12    # B, later in the file, overwrites A where they overlap
    assert np.array_equal(got, expected)  # crowd rows 5..7 stay 0 except where B lies
    assert not np.asarray(Image.open(dst / "annotations" / "val2014" / "COCO_val2014_000000000003.png")).any()
    poly = np.asarray(Image.open(dst / "annotations" / "train2014" / "COCO_train2014_000000000011.png"))
    assert poly[3, 4] == 2 and poly[0, 0] == 0 and poly[7, 9] == 0 and set(np.unique(poly).tolist()) == {0, 2}
    names = (dst / "classes.txt").read_text().split()
    assert len(names) == 80 and names[0] == "cat1" and names[11] == "cat13" and names[79] == "cat90"
    index = json.loads((dst / "index.json").read_text())  # class -> {image stem: pixels of the class}
    assert index["cat1"] == {"COCO_train2014_000000000007": 18, "COCO_val2014_000000000007": 18}  # 24 - 6 under B
    assert index["cat2"] == {"COCO_train2014_000000000011": int((poly == 2).sum()),
                             "COCO_val2014_000000000011": int((poly == 2).sum())} and index["cat90"] == {}
    # restartable: a second run writes nothing; a deleted mask is rewritten
    os.remove(dst / "annotations" / "train2014" / "COCO_train2014_000000000003.png")
    main(["--quiet", "coco20i", str(src), str(dst)])
    out = capsys.readouterr().out
    assert "train2014: 1 masks written, 2 already there" in out and "val2014: 0 masks written, 3 already there" in out
    assert json.loads((dst / "index.json").read_text()) == index
    # the fsseg reader reads the result (fold 0 tests classes 0, 4, 8, ...; value 1 = class 0)
    for split in ("train2014", "val2014"):
        for n in (7, 3, 11):
            os.makedirs(dst / split, exist_ok=True)
            Image.new("RGB", (10, 8)).save(dst / split / f"COCO_{split}_{n:012d}.jpg")
    ds = Coco20i(str(dst), fold=0, split="test")
    assert [os.path.basename(k) for k in ds.samples_by_class[0]] == ["COCO_val2014_000000000007.jpg"]
    assert ds.class_names[0] == "cat1"
    # the area rule from index.json alone: no mask is opened
    import data_modules.readers.mask_index as mask_index

    def no_mask(path):
        raise AssertionError(f"mask opened: {path}")

    monkeypatch.setattr(mask_index, "areas_of", no_mask)
    assert len(Coco20i(str(dst), fold=0, split="test", min_pixels=18).samples_by_class[0]) == 1
    assert Coco20i(str(dst), fold=0, split="test", min_pixels=19).samples_by_class[0] == []


def test_prepare_coco20i_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2014.json"):
        prepare_coco20i(str(tmp_path), str(tmp_path / "out"), ["train2014"], quiet=True)


def _savemat_sbd(path, seg):
    from scipy.io import savemat

    cats = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros((1, 1), np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": cats}})


def test_prepare_pascal5i_voc_precedence_sbd_mat_and_restart(tmp_path, capsys):
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    voc_mask = np.zeros((6, 7), np.uint8)
    voc_mask[1:5, 1:6] = 255  # boundary
    voc_mask[2:4, 2:5] = 15   # person
    pal = Image.fromarray(voc_mask, mode="P")
    pal.putpalette([0, 0, 0] * 256)
    os.makedirs(voc / "SegmentationClass")
    pal.save(voc / "SegmentationClass" / "2007_000032.png")
    sbd_same = np.full((6, 7), 3, np.uint8)  # SBD's version of the same image: ignored
    sbd_only = np.zeros((5, 4), np.uint8)
    sbd_only[1:3, 0:2] = 20
    _savemat_sbd(str(sbd / "cls" / "2007_000032.mat"), sbd_same)
    _savemat_sbd(str(sbd / "cls" / "2008_000002.mat"), sbd_only)
    s = prepare_pascal5i(str(voc), str(sbd), quiet=True)
    assert (s["written_voc"], s["written_sbd"], s["skipped"], s["total"]) == (1, 1, 0, 2)
    out_dir = voc / "SegmentationClassAug"
    a = Image.open(out_dir / "2007_000032.png")
    assert a.mode == "L" and np.array_equal(np.asarray(a), voc_mask)
    assert np.array_equal(np.asarray(Image.open(out_dir / "2008_000002.png")), sbd_only)
    main(["--quiet", "pascal5i", str(voc), str(sbd.parent)])  # SBD's release folder also accepted
    assert "0 masks from VOC2012 SegmentationClass + 0 from SBD written, 2 already there" in capsys.readouterr().out
    from scipy.io import savemat

    savemat(str(sbd / "cls" / "2009_000001.mat"), {"other": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="2009_000001.mat.*GTcls"):
        prepare_pascal5i(str(voc), str(sbd), quiet=True)


YELLOW, CYAN, MAGENTA, GREEN, BLUE, WHITE, BLACK = ((255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0),
                                                    (0, 0, 255), (255, 255, 255), (0, 0, 0))


def _deepglobe_source(folder):
    """A 60x60 DeepGlobe image: 6x6 tiles of 10x10 px. Mask all agriculture except:
    tile (0,1): 4 water px (4% <= 4.8%: dropped); tile (0,2): 5 urban px (5%: kept; folders 1, 2);
    tile (1,0): forest | barren halves (folders 4, 6); tile (1,1): 50 rangeland + 45 unknown + 5
    agriculture (folders 3, 1); tile (1,2): 50 water + 50 agriculture (folders 5, 1).
    The other 31 tiles are one colour (dropped)."""
    m = np.zeros((60, 60, 3), np.uint8)
    m[:] = YELLOW
    m[0, 10:14] = BLUE
    m[0, 20:25] = CYAN
    m[10:20, 0:5], m[10:20, 5:10] = GREEN, WHITE
    m[10:15, 10:20] = MAGENTA
    m[15:20, 10:19] = BLACK  # 45 px; the tile's last column (5 px) stays agriculture
    m[10:15, 20:30] = BLUE
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(m).save(os.path.join(folder, "104_mask.png"))
    img = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(folder, "104_sat.jpg"), quality=95)
    return m


def test_prepare_deepglobe_tiles_filter_and_class_folders(tmp_path):
    src, dst = tmp_path / "train", tmp_path / "Deepglobe"
    m = _deepglobe_source(str(src))
    s = prepare_deepglobe(str(tmp_path), str(dst), quiet=True)  # finds train/ below the given folder
    assert (s["images"], s["tiles"], s["kept"]) == (1, 36, 4)
    assert (s["dropped_single_colour"], s["dropped_small_colour"]) == (31, 1)
    assert s["per_class"] == {1: 3, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}
    names = lambda k: sorted(os.listdir(dst / str(k) / "test" / "groundtruth"))  # noqa: E731
    assert names(1) == ["104_02.png", "104_11.png", "104_12.png"] and names(2) == ["104_02.png"]
    gt = np.asarray(Image.open(dst / "2" / "test" / "groundtruth" / "104_02.png"))
    assert gt.dtype == np.uint8 and set(np.unique(gt).tolist()) == {0, 255}
    assert np.array_equal(gt == 255, (m[0:10, 20:30] == CYAN).all(axis=2)) and (gt == 255).sum() == 5
    tile = np.asarray(Image.open(dst / "4" / "test" / "origin" / "104_10.jpg"))
    assert tile.shape == (10, 10, 3)
    ds = Deepglobe(str(dst))
    assert [len(ds.samples_by_class[c]) for c in ds.class_ids] == [3, 1, 1, 1, 1, 1]
    assert ds.load(ds.samples_by_class[2][0], [2])[1][0].sum() == 50  # rangeland in tile (1,1)
    again = prepare_deepglobe(str(src), str(dst), quiet=True)
    assert again["files_written"] == 0 and again["files_skipped"] == 16


def test_fsseg_prepare_deepglobe_command(tmp_path, capsys):
    from fsseg.cli import main as fsseg_main  # the `fsseg` entry point, in-process (no 20 s subprocess start)

    _deepglobe_source(str(tmp_path / "train"))
    fsseg_main(["prepare", "--quiet", "deepglobe", str(tmp_path / "train"), str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "1 images -> 36 tiles" in out and "kept 4 (dropped 31 single-colour and 1" in out
    assert os.path.isfile(tmp_path / "out" / "5" / "test" / "origin" / "104_12.jpg")
    with pytest.raises(SystemExit) as stop:  # bad input: one `error:` line, exit code 2, no traceback
        fsseg_main(["prepare", "deepglobe", str(tmp_path / "nothing"), str(tmp_path / "o2")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: fsseg prepare deepglobe: no <id>_sat.jpg images"), err


def test_hsnet_coco_pools_index_classes_in_coco_id_order(shared_data):
    """The value rule of `prepare coco20i` (class c 0-based = the c-th category in id order, the
    order of coco128's classes.txt): every class HSNet's pools list a coco128 image under is one the
    image holds under that order (HSNet drops some small objects, so it is a subset)."""
    import pickle

    shared = str(shared_data("splits", "coco").parent.parent)

    class PlainData(pickle.Unpickler):  # dict/list/str/int only: never import or run anything
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

    pools: dict = {}
    for split in ("trn", "val"):
        for fold in range(4):
            with open(os.path.join(shared, "splits", "coco", split, f"fold{fold}.pkl"), "rb") as f:
                for c, paths in PlainData(f).load().items():
                    for p in paths:
                        pools.setdefault(int(os.path.splitext(p)[0].rsplit("_", 1)[1]), set()).add(c)
    with open(os.path.join(shared, "coco128", "classes.txt")) as f:
        names = [x.strip() for x in f if x.strip()]
    with open(os.path.join(shared, "coco128", "index.json")) as f:
        index = json.load(f)
    held: dict = {}
    for cname, ids in index.items():
        for i in ids:
            held.setdefault(int(i), set()).add(names.index(cname))
    common = [i for i in held if i in pools]
    assert len(common) > 100
    assert all(pools[i] <= held[i] for i in common)
