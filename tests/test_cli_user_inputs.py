"""The ``fsseg`` command line given a user's own files: `fsseg --help` lists every command, every
argument has a help text, every bad input gives a correct result or a one-line ``error:`` naming the
file (the README's bad-input table), and predict on a support/query folder says what it used and skipped.

The bad files read by the data modules themselves: tests/test_data_modules_folder.py."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from data_modules import SupportQueryFolderDataModule
from fsseg.cli import TOOLS, main, main_help, one_line, run_cli, tool_help
from tests.image_folders import make_folder, save_exif_jpeg, save_image


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
    make_folder(root, n=2)
    line = _error_line(capsys, ["predict", "--data.support_dir", str(root), "--data.query_dir", str(root / "images")])
    assert "--ckpt_path" in line and "--allow_untrained" in line


@pytest.fixture(scope="module")
def predicted(small_ckpt, tmp_path_factory):
    """One predict run over a support folder and queries holding an EXIF-turned photo and an unreadable file."""
    t = tmp_path_factory.mktemp("own")
    sup = t / "support"
    make_folder(sup, n=3, size=(56, 56))
    q = t / "query"
    q.mkdir()
    rng = np.random.default_rng(1)
    save_image(str(q / "plain.png"), rng.integers(0, 255, (30, 70, 3), dtype=np.uint8))
    save_exif_jpeg(q / "turned.jpg", rng.integers(0, 255, (30, 70, 3), dtype=np.uint8), 6)
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


def test_bad_query_without_skip_is_one_line(small_ckpt, tmp_path, capsys):
    q = tmp_path / "q"
    q.mkdir()
    (q / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    sup = tmp_path / "s"
    make_folder(sup, n=1, size=(56, 56))
    line = _error_line(capsys, ["predict", "--ckpt_path", small_ckpt, "--data.support_dir", str(sup),
                                "--data.query_dir", str(q), "--output_dir", str(tmp_path / "o"),
                                "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    assert str(q / "broken.jpg") in line and "cannot decode" in line


def test_support_set_used_is_printed_and_written(predicted):
    (cls,) = predicted["summary"]["support_set"]["classes"].values()
    assert cls["k"] == 2 and cls["available"] == 3
    assert cls["files"] == [str(predicted["sup"] / "images" / f"{i}.jpg") for i in (0, 1)]


# ----------------------------------------------------------------- the README's bad-input table
def test_every_readme_table_error_is_one_error_line(tmp_path):
    """Each error of the README table (the reliability catalogue) is what `fsseg` prints as one
    `error:` line (exit 2): a user error, one line, naming the file where there is one."""
    from fsseg.cli.errors import is_user_error, user_facing
    from tests.test_cli_failures import CATALOGUE, RUN_THROUGH_THE_CLI

    for name, case in CATALOGUE.items():
        if name in RUN_THROUGH_THE_CLI:  # they check their `error:` line themselves
            continue
        d = tmp_path / name
        d.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            err = case(d, skip=False)
        if not isinstance(err, Exception):
            continue  # handled correctly (skipped with a warning), no error
        assert is_user_error(err), (name, type(err))
        line = one_line(user_facing(err))
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
