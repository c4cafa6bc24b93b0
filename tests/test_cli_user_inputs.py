"""Segmenting your own images (issue #14): every bad input gives a correct result or a one-line error
naming the file; `fsseg --help` lists every command; every README bad-input error is one `error:` line.

One test per bad input: ``test_predict_without_checkpoint_refuses``, ``test_16bit_image_and_mask``,
``test_duplicate_stems``, ``test_dangling_symlink``, ``test_exif_orientation_*``,
``test_stems_match_ignoring_case``, ``test_skip_bad_queries``, ``test_index_masks_take_a_class_list``,
``test_support_set_used_is_printed_and_written``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules import BadSampleError, FolderDataset, SupportQueryFolderDataModule, read_image, read_mask
from fsseg.cli import TOOLS, main, main_help, one_line, run_cli, tool_help
from tests.test_data import _make_folder, _save
from tests.test_predict import small_ckpt  # noqa: F401 - a module-scoped fixture used below


def _error_line(capsys, argv: list[str]) -> str:
    """Run ``fsseg ARGV`` in-process: it must exit 2 printing one ``error:`` line, no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------ help
def test_main_help_lists_every_command_with_one_line():
    text = main_help()
    for name in ("fit", "validate", "test", "predict", *TOOLS):
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(name + " ")]
        assert len(line.split(None, 1)[1]) > 10, line
    assert "Lightning Trainer command line tool" not in text


def test_tool_help_falls_back_to_the_module_docstring(monkeypatch):
    monkeypatch.setitem(TOOLS, "export-plain", "fsseg.export:main")  # an entry without a help text
    assert tool_help("export-plain").startswith("a trained segmenter as ONNX (episodic with its support set")


def test_params_help_is_fsseg_params_with_underscores(capsys):
    with pytest.raises(SystemExit):
        main(["params", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: fsseg params") and "python -m" not in out
    assert "--image_size" in out and "--image-size" not in out


def test_unknown_command_is_one_line(capsys):
    assert "unknown command 'frobnicate'" in _error_line(capsys, ["frobnicate"])


# ------------------------------------------------------------------------- bad inputs, one each
def test_predict_without_checkpoint_refuses(capsys, tmp_path):
    root = tmp_path / "s"
    _make_folder(root, n=2)
    line = _error_line(capsys, ["predict", "--data.support_dir", str(root), "--data.query_dir", str(root / "images")])
    assert "--ckpt_path" in line and "--allow_untrained" in line


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
    _make_folder(root, n=3)
    _save(str(root / "images" / "1.png"), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(BadSampleError) as e:
        FolderDataset(str(root))
    msg = str(e.value)
    assert str(root / "images" / "1.jpg") in msg and str(root / "images" / "1.png") in msg


def test_dangling_symlink(tmp_path):
    root = tmp_path / "s"
    _make_folder(root, n=3)
    os.symlink(tmp_path / "gone.jpg", root / "images" / "3.jpg")
    with pytest.raises(BadSampleError) as e:
        SupportQueryFolderDataModule(str(root), str(root / "images"), image_size=56)
    assert e.value.path == str(root / "images" / "3.jpg") and "broken symbolic link" in str(e.value)
    assert str(tmp_path / "gone.jpg") in str(e.value)


def _exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=100)


def test_exif_orientation_applied_to_image_and_mask_alike(tmp_path):
    """Orientation 6 (rotate 90 clockwise to view): the image is turned; its mask, stored unturned
    like the image's pixels, is turned the same way, so both stay aligned."""
    root = tmp_path / "s"
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[0:10, 0:20] = 255  # a white block at the stored top-left
    m = np.zeros((40, 60), np.uint8)
    m[0:10, 0:20] = 255
    (root / "images").mkdir(parents=True)
    _exif_jpeg(root / "images" / "a.jpg", stored, 6)
    _save(str(root / "masks" / "a.png"), m)
    ds = FolderDataset(str(root))
    img, (mask,) = ds.load(ds.samples_by_class[0][0], [0])
    assert img.shape[:2] == (60, 40) and mask.shape == (60, 40)  # turned
    viewed = np.asarray(Image.open(root / "images" / "a.jpg").transpose(Image.Transpose.ROTATE_270))
    assert np.abs(img.astype(int) - viewed.astype(int)).max() < 40
    assert (img[..., 0][mask == 1] > 127).mean() > 0.95 and (img[..., 0][mask == 0] < 127).mean() > 0.95
    # a mask already drawn on the turned photo is used as it is
    _save(str(root / "masks" / "a.png"), np.ascontiguousarray(np.rot90(m, -1)))
    img2, (mask2,) = ds.load(ds.samples_by_class[0][0], [0])
    assert np.array_equal(mask2, mask)


@pytest.fixture(scope="module")
def predicted(small_ckpt, tmp_path_factory):  # noqa: F811 - the fixture of test_predict
    """One predict run over a support folder and queries holding an EXIF-turned photo and an unreadable file."""
    t = tmp_path_factory.mktemp("own")
    sup = t / "support"
    _make_folder(sup, n=3, size=(56, 56))
    q = t / "query"
    q.mkdir()
    rng = np.random.default_rng(1)
    _save(str(q / "plain.png"), rng.integers(0, 255, (30, 70, 3), dtype=np.uint8))
    _exif_jpeg(q / "turned.jpg", rng.integers(0, 255, (30, 70, 3), dtype=np.uint8), 6)
    (q / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = t / "out"
    cli = run_cli(["predict", "--ckpt_path", small_ckpt, "--data.support_dir", str(sup), "--data.query_dir", str(q),
                   "--output_dir", str(out), "--skip_bad_queries", "true", "--data.shots", "2",
                   "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    return {"out": out, "q": q, "sup": sup, "cli": cli, "summary": json.loads((out / "summary.json").read_text())}


def test_predict_takes_the_image_size_from_the_checkpoint(predicted):
    assert predicted["cli"].datamodule.image_size == 112  # the small model's, not predict.yaml's


def test_exif_orientation_of_queries_applied_and_said(predicted):
    mask = Image.open(predicted["out"] / "masks" / "turned.png")
    assert mask.size == (30, 70)  # the photo as viewers show it (stored 70x30, orientation 6)
    assert Image.open(predicted["out"] / "masks" / "plain.png").size == (70, 30)
    assert predicted["summary"]["exif_orientation_applied"] == [str(predicted["q"] / "turned.jpg")]


def test_skip_bad_queries(predicted):
    skipped = predicted["summary"]["skipped_queries"]
    assert skipped["count"] == 1 and skipped["files"][0]["image"] == str(predicted["q"] / "broken.jpg")
    assert "cannot decode" in skipped["files"][0]["reason"]
    assert sorted(p.name for p in (predicted["out"] / "masks").glob("*.png")) == ["plain.png", "turned.png"]


def test_bad_query_without_skip_is_one_line(small_ckpt, tmp_path, capsys):  # noqa: F811
    q = tmp_path / "q"
    q.mkdir()
    (q / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    sup = tmp_path / "s"
    _make_folder(sup, n=1, size=(56, 56))
    line = _error_line(capsys, ["predict", "--ckpt_path", small_ckpt, "--data.support_dir", str(sup),
                                "--data.query_dir", str(q), "--output_dir", str(tmp_path / "o"),
                                "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    assert str(q / "broken.jpg") in line and "cannot decode" in line


def test_support_set_used_is_printed_and_written(predicted):
    (cls,) = predicted["summary"]["support_set"]["classes"].values()
    assert cls["k"] == 2 and cls["available"] == 3
    assert cls["files"] == [str(predicted["sup"] / "images" / f"{i}.jpg") for i in (0, 1)]


def test_stems_match_ignoring_case(tmp_path):
    root = tmp_path / "s"
    _save(str(root / "images" / "IMG_1.JPG"), np.zeros((20, 20, 3), np.uint8))
    m = np.zeros((20, 20), np.uint8)
    m[2:8, 2:8] = 255
    _save(str(root / "masks" / "img_1.png"), m)
    ds = FolderDataset(str(root))
    assert ds.records[str(root / "images" / "IMG_1.JPG")][1] == str(root / "masks" / "img_1.png")
    _save(str(root / "masks" / "Img_1.png"), m)  # now ambiguous: skipped, and the warning says why
    _save(str(root / "images" / "2.jpg"), np.zeros((20, 20, 3), np.uint8))
    _save(str(root / "masks" / "2.png"), m)
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
        _save(str(root / "images" / f"{i}.jpg"), rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
        _save(str(root / "masks" / f"{i}.png"), m)
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


# ----------------------------------------------------------------- the README's bad-input table
def test_every_readme_table_error_is_one_error_line(tmp_path):
    """Each error of the README table (the reliability catalogue) is what `fsseg` prints as one
    `error:` line (exit 2): a user error, one line, naming the file where there is one."""
    from fsseg.cli import _is_user_error, _user_facing
    from tests.test_reliability import CATALOGUE

    cli_cases = {"checkpoint_other_architecture", "config_unknown_key"}  # run through the CLI themselves
    for name, case in CATALOGUE.items():
        if name in cli_cases:
            continue
        d = tmp_path / name
        d.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            err = case(d, skip=False)
        if not isinstance(err, Exception):
            continue  # handled correctly (skipped with a warning), no error
        assert _is_user_error(err), (name, type(err))
        line = one_line(_user_facing(err))
        assert "\n" not in line and line, name
        path = getattr(err, "path", None)
        if path:
            assert path in line, (name, line)


def test_every_model_and_data_argument_has_a_help_text():
    """jsonargparse shows each constructor argument's docstring entry as its --help text."""
    import inspect

    import docstring_parser

    from callbacks import PredictionWriter
    from data_modules import (
        EpisodicDataModule,
        SpecializationDataModule,
        SupportQueryFolderDataModule,
        UnlabelledDataModule,
    )
    from fsseg.modules import DistillationModule, FewShotModule, SpecializeModule

    missing = {}
    for cls in (FewShotModule, DistillationModule, SpecializeModule, EpisodicDataModule, UnlabelledDataModule,
                SupportQueryFolderDataModule, SpecializationDataModule, PredictionWriter):
        doc = docstring_parser.parse(f"{cls.__doc__ or ''}\n{cls.__init__.__doc__ or ''}")
        documented = {p.arg_name for p in doc.params}
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        if [p for p in params if p not in documented]:
            missing[cls.__name__] = [p for p in params if p not in documented]
    assert not missing, missing
