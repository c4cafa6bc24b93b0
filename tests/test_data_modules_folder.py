"""Reading a user's own image/mask folders (data_modules.folder, data_modules.masks): 16-bit files,
duplicate stems, broken links, EXIF orientation, stems matched ignoring case, index masks with a class
list; each gives a correct result or an error naming the file."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from data_modules import BadSampleError, FolderDataset, SupportQueryFolderDataModule, read_image, read_mask
from tests.image_folders import make_folder, save_exif_jpeg, save_image


def test_16bit_image_and_mask(tmp_path):
    ramp = (np.arange(40 * 50).reshape(40, 50) * 32).astype(np.uint16)  # 0..63968
    Image.fromarray(ramp, mode="I;16").save(tmp_path / "img16.png")
    assert Image.open(tmp_path / "img16.png").mode.startswith("I;16")
    img = read_image(tmp_path / "img16.png")
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert img.shape == (40, 50, 3) and np.array_equal(img[..., 0], expected)  # scaled, not clipped white
    m = np.zeros((40, 50), np.uint16)
    m[5:20, 10:30] = 65535
    Image.fromarray(m, mode="I;16").save(tmp_path / "mask16.png")
    mask = read_mask(tmp_path / "mask16.png")
    assert set(np.unique(mask)) == {0, 1} and mask[5:20, 10:30].all() and mask.sum() == 15 * 20


def test_duplicate_stems(tmp_path):
    root = tmp_path / "s"
    make_folder(root, n=3)
    save_image(str(root / "images" / "1.png"), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(BadSampleError) as e:
        FolderDataset(str(root))
    msg = str(e.value)
    assert str(root / "images" / "1.jpg") in msg and str(root / "images" / "1.png") in msg


def test_dangling_symlink(tmp_path):
    root = tmp_path / "s"
    make_folder(root, n=3)
    os.symlink(tmp_path / "gone.jpg", root / "images" / "3.jpg")
    with pytest.raises(BadSampleError) as e:
        SupportQueryFolderDataModule(str(root), str(root / "images"), image_size=56)
    assert e.value.path == str(root / "images" / "3.jpg") and "broken symbolic link" in str(e.value)
    assert str(tmp_path / "gone.jpg") in str(e.value)


def test_exif_orientation_applied_to_image_and_mask_alike(tmp_path):
    """Orientation 6 (rotate 90 clockwise to view): the image is turned; its mask, stored unturned
    like the image's pixels, is turned the same way, so both stay aligned."""
    root = tmp_path / "s"
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[0:10, 0:20] = 255  # a white block at the stored top-left
    m = np.zeros((40, 60), np.uint8)
    m[0:10, 0:20] = 255
    (root / "images").mkdir(parents=True)
    save_exif_jpeg(root / "images" / "a.jpg", stored, 6)
    save_image(str(root / "masks" / "a.png"), m)
    ds = FolderDataset(str(root))
    img, (mask,) = ds.load(ds.samples_by_class[0][0], [0])
    assert img.shape[:2] == (60, 40) and mask.shape == (60, 40)  # turned
    viewed = np.asarray(Image.open(root / "images" / "a.jpg").transpose(Image.Transpose.ROTATE_270))
    assert np.abs(img.astype(int) - viewed.astype(int)).max() < 40
    assert (img[..., 0][mask == 1] > 127).mean() > 0.95 and (img[..., 0][mask == 0] < 127).mean() > 0.95
    # a mask already drawn on the turned photo is used as it is
    save_image(str(root / "masks" / "a.png"), np.ascontiguousarray(np.rot90(m, -1)))
    img2, (mask2,) = ds.load(ds.samples_by_class[0][0], [0])
    assert np.array_equal(mask2, mask)


def test_stems_match_ignoring_case(tmp_path):
    root = tmp_path / "s"
    save_image(str(root / "images" / "IMG_1.JPG"), np.zeros((20, 20, 3), np.uint8))
    m = np.zeros((20, 20), np.uint8)
    m[2:8, 2:8] = 255
    save_image(str(root / "masks" / "img_1.png"), m)
    ds = FolderDataset(str(root))
    assert ds.records[str(root / "images" / "IMG_1.JPG")][1] == str(root / "masks" / "img_1.png")
    save_image(str(root / "masks" / "Img_1.png"), m)  # now ambiguous: skipped, and the warning says why
    save_image(str(root / "images" / "2.jpg"), np.zeros((20, 20, 3), np.uint8))
    save_image(str(root / "masks" / "2.png"), m)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = FolderDataset(str(root))
    assert str(root / "images" / "IMG_1.JPG") not in ds.records
    assert any("differ only in case are ambiguous" in str(x.message) for x in w)


def test_index_masks_take_a_class_list(tmp_path):
    root = tmp_path / "coco"
    rng = np.random.default_rng(0)
    for i in range(4):
        m = np.zeros((30, 30), np.uint8)
        m[2:12, 2:12] = 18  # dog
        if i % 2:
            m[15:25, 15:25] = 5  # airplane in two images
        save_image(str(root / "images" / f"{i}.jpg"), rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
        save_image(str(root / "masks" / f"{i}.png"), m)
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, 5)) + "\nairplane\n" +
                                      "\n".join(f"c{k}" for k in range(6, 18)) + "\ndog\n")
    dm = SupportQueryFolderDataModule(str(root), str(root / "images"), image_size=28, classes="dog,airplane")
    desc = dm.support_set_description()
    assert list(desc["classes"]) == ["dog", "airplane"]
    assert desc["classes"]["dog"]["k"] == 2 and desc["classes"]["dog"]["available"] == 4  # K = smallest count
    sb = dm.support_batch()
    assert sb["support_masks"].shape[:3] == (1, 2, 2)
    assert SupportQueryFolderDataModule(str(root), str(root / "images"), image_size=28,
                                        classes=["18", "5"]).support_batch()["class_names"] == ["dog", "airplane"]
    with pytest.raises(ValueError, match="class 'cat' unknown"):
        SupportQueryFolderDataModule(str(root), str(root / "images"), image_size=28, classes="cat")
