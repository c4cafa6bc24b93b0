"""How fsseg fails: bad input, crashes, interrupted runs, determinism and safe loading, each proven.

* ``test_bad_input_catalogue``: every bad input of the README table gives a clear error naming the
  file and the problem (or, with ``skip_bad_samples=True``, a counted skip).
* ``test_training_error_names_the_batch`` / ``test_loader_error_names_the_file``: a crash always says
  which samples did it.
* ``test_nonfinite_loss_*``: NaN loss stops before the weights change (``raise``) or is skipped and
  counted (``skip``).
* ``test_fewshot_sigkill_resume_*``: interrupted runs (the atomic checkpoint write itself:
  tests/test_fsseg_checkpoint_io.py).
* ``test_fsseg_test_deterministic_*``: repeated runs and worker counts give identical metrics.
* ``test_*weights_only*``: safe loading (concurrent caches: tests/test_fsseg_cache.py).
"""

from __future__ import annotations

import random
import re
import signal
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from data_modules import (
    BadSampleError,
    EpisodicDataModule,
    FolderDataset,
    SupportQueryFolderDataModule,
    UnlabelledDataModule,
)
from data_modules.episodes import Episode, EpisodeDataset
from fsseg.models.weights import CheckpointMismatchError, CheckpointNotFoundError
from fsseg.modules import DistillationModule, FewShotModule
from fsseg.modules.common import NonFiniteLossError, SampleTrackingMixin
from tests.cli_utils import (
    TINY_FEWSHOT,
    csv_logger,
    last_value,
    read_metrics,
    run_fsseg,
    tiny_module_args,
)
from tests.image_folders import make_folder, save_image


def _expect(fn, exc_type, *needles):
    with pytest.raises(exc_type) as e:
        fn()
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message: {msg}"
    return e.value


def _iterate(loader):
    return [b for b in loader]


def _test_dm(root, **kw):
    kw = dict(dict(dataset="folder", root=str(root), shots=1, image_size=32, batch_size=2, test_episodes=0), **kw)
    return EpisodicDataModule(**kw)


def _folder_case(root, skip, skipped, *needles):
    """A bad file in a folder dataset, found while iterating the test episodes: a BadSampleError whose
    message holds every needle, or (skip mode) the data module and the file that must never be served."""
    dm = _test_dm(root, skip_bad_samples=skip)
    if not skip:
        return _expect(lambda: _iterate(dm.test_dataloader()), BadSampleError, *needles)
    return dm, skipped


def _names(batches):
    return [n for b in batches for n in (*b["query_name"], *[s for ss in b["support_names"] for s in ss])]


def _tiny_ckpt(path: Path, variant: str, keep_hparams: bool = True) -> Path:
    torch.manual_seed(0)
    m = FewShotModule(**tiny_module_args(variant))
    ckpt = {"state_dict": m.state_dict(), "epoch": 0, "global_step": 0,
            "pytorch-lightning_version": L.__version__, "loops": {}, "callbacks": {}}
    if keep_hparams:
        ckpt["hyper_parameters"] = dict(m.hparams)
    torch.save(ckpt, path)
    return path


# ============================================================================ 1. bad-input catalogue
def case_corrupt_jpeg(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=5)
    (root / "images" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return _folder_case(root, skip, "images/2.jpg", "images/2.jpg", "cannot decode")


def case_truncated_png(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=5)
    data = (root / "masks" / "1.png").read_bytes()
    (root / "masks" / "1.png").write_bytes(data[: len(data) // 2])
    return _folder_case(root, skip, "masks/1.png", "masks/1.png", "cannot decode")


def case_mask_size_mismatch(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=5, mask_fn=lambda i, m: np.zeros((30, 30), np.uint8) if i == 3 else m)
    return _folder_case(root, skip, "3.png", "masks/3.png", "images/3.jpg", "30x30", "differs")


def case_unexpected_mask_values(tmp, skip):
    root = tmp / "data"

    def odd(i, m):
        if i == 4:
            m = m.copy()
            m[30:, :] = 7
        return m
    make_folder(root, n=5, mask_fn=odd)
    return _folder_case(root, skip, "4.png", "masks/4.png", "unexpected mask values")


def case_empty_support_mask_episode(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=4, mask_fn=lambda i, m: np.zeros_like(m) if i == 0 else m)
    ds = FolderDataset(str(root))
    k = sorted(ds.samples_by_class[0])
    episodes = [Episode(k[1], ((k[0],),), (0,)), Episode(k[2], ((k[3],),), (0,))]
    eds = EpisodeDataset(ds, 1, episodes=episodes, image_size=32, skip_bad_samples=skip)
    if not skip:
        return _expect(lambda: eds[0], BadSampleError, "masks/0.png", "empty support mask")
    with pytest.warns(UserWarning, match="masks/0.png"):
        items = [eds[i] for i in range(len(eds))]
    assert eds.num_skipped == 1
    assert all("0.jpg" not in s for it in items for s in it["support_names"])
    return None


def case_empty_support_mask_predict(tmp, skip):
    sup = tmp / "support"
    make_folder(sup, n=2, mask_fn=lambda i, m: np.zeros_like(m) if i == 1 else m)
    q = tmp / "photos"
    save_image(str(q / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    dm = SupportQueryFolderDataModule(str(sup), str(q), image_size=32)
    return _expect(dm.support_batch, BadSampleError, "masks/1.png", "empty support mask")


def case_too_few_images_for_k_shot(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=4)
    dm = _test_dm(root, shots=4)
    _expect(lambda: dm.setup("test"), ValueError, "K+1=5", "'data': 4")
    q = tmp / "photos"
    save_image(str(q / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    pdm = SupportQueryFolderDataModule(str(root), str(q), image_size=32, shots=5)
    return _expect(pdm.support_batch, ValueError, "fewer than K=5", "'data': 4")


def case_non_image_file(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=3)
    (root / "images" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 1 non-image file.*notes.txt"):
        ds = FolderDataset(str(root))
    assert len(ds.samples_by_class[0]) == 3


def case_image_without_mask(tmp, skip):
    root = tmp / "data"
    make_folder(root, n=3)
    save_image(str(root / "images" / "9.jpg"), np.zeros((40, 50, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"1 image\(s\) without a mask.*9.jpg"):
        ds = FolderDataset(str(root))
    assert len(ds.samples_by_class[0]) == 3


def case_empty_image_folder(tmp, skip):
    (tmp / "empty").mkdir()
    dm = UnlabelledDataModule(root=str(tmp / "empty"), image_size=32)
    _expect(dm.setup, FileNotFoundError, "empty", "contains no images")
    save_image(str(tmp / "s" / "images" / "0.jpg"), np.zeros((8, 8, 3), np.uint8))
    save_image(str(tmp / "s" / "masks" / "0.png"), np.ones((8, 8), np.uint8) * 255)
    return _expect(lambda: SupportQueryFolderDataModule(str(tmp / "s"), str(tmp / "empty")), FileNotFoundError,
                   "query folder", "contains no images")


def case_corrupt_unlabelled_image(tmp, skip):
    d = tmp / "unlabelled"
    for i in range(3):
        save_image(str(d / f"{i}.png"), np.zeros((16, 16, 3), np.uint8))
    (d / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dm = UnlabelledDataModule(root=str(d), image_size=16, val_fraction=0, batch_size=1, shuffle=False)
    return _expect(lambda: _iterate(dm.train_dataloader()), BadSampleError, "1.png", "cannot decode")


def case_weights_path_missing(tmp, skip):
    missing = str(tmp / "nowhere" / "adapter.pth")
    return _expect(lambda: FewShotModule(**tiny_module_args("compact"), adapter_checkpoint=missing),
                   CheckpointNotFoundError, missing, "not found")


def case_checkpoint_other_architecture(tmp, skip):
    """In Python (Trainer.test(ckpt_path=...)) and through `fsseg test --ckpt_path` (a checkpoint whose
    hyper-parameters are gone, so the config's architecture is used)."""
    compact = _tiny_ckpt(tmp / "compact.ckpt", "compact")
    dm = EpisodicDataModule(dataset="synthetic", shots=1, image_size=112, batch_size=1, test_episodes=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp)
    _expect(lambda: trainer.test(FewShotModule(**tiny_module_args("full")), dm, ckpt_path=str(compact), verbose=False),
            CheckpointMismatchError, "another architecture", "FewShotModule", "segmenter")
    bare = _tiny_ckpt(tmp / "bare.ckpt", "compact", keep_hparams=False)
    proc = run_fsseg(["test", *TINY_FEWSHOT, "--model.init_args.segmenter.method", "full", "--data.init_args.test_episodes",
                      "1", "--ckpt_path", str(bare), "--trainer.default_root_dir", str(tmp / "t"),
                      "--trainer.logger", "false"], cwd=tmp, check=False)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "another architecture" in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def case_config_unknown_key(tmp, skip):
    bad = tmp / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 1\n")
    proc = run_fsseg(["fit", "--config", str(bad)], cwd=tmp, check=False)
    assert proc.returncode == 2
    assert "error: Subcommand 'fit' does not accept option 'trainer.max_epoch'" in proc.stderr, proc.stderr[-2000:]


CATALOGUE = {
    "corrupt_jpeg": case_corrupt_jpeg,
    "truncated_png": case_truncated_png,
    "mask_size_mismatch": case_mask_size_mismatch,
    "unexpected_mask_values": case_unexpected_mask_values,
    "empty_support_mask_episode": case_empty_support_mask_episode,
    "empty_support_mask_predict": case_empty_support_mask_predict,
    "too_few_images_for_k_shot": case_too_few_images_for_k_shot,
    "non_image_file": case_non_image_file,
    "image_without_mask": case_image_without_mask,
    "empty_image_folder": case_empty_image_folder,
    "corrupt_unlabelled_image": case_corrupt_unlabelled_image,
    "weights_path_missing": case_weights_path_missing,
    "checkpoint_other_architecture": case_checkpoint_other_architecture,
    "config_unknown_key": case_config_unknown_key,
}
SKIPPABLE = ["corrupt_jpeg", "truncated_png", "mask_size_mismatch", "unexpected_mask_values",
             "empty_support_mask_episode"]


RUN_THROUGH_THE_CLI = {"checkpoint_other_architecture", "config_unknown_key"}  # a CLI process each: slow


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in RUN_THROUGH_THE_CLI else c
                                  for c in CATALOGUE])
def test_bad_input_catalogue(case, tmp_path):
    CATALOGUE[case](tmp_path, skip=False)


@pytest.mark.parametrize("case", SKIPPABLE)
def test_bad_input_catalogue_skip(case, tmp_path):
    """``skip_bad_samples=True``: the episode is re-drawn without the bad sample, the skip is counted
    and the warning names the file."""
    out = CATALOGUE[case](tmp_path, skip=True)
    if out is None:
        return
    dm, bad = out
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = _iterate(dm.test_dataloader())
    ds = dm.datasets["test"]
    assert ds.num_skipped >= 1 and any(bad in str(x.message) for x in w)
    names = _names(batches)
    assert len(names) == 2 * len(ds)
    stem = Path(bad).stem
    assert all(Path(n).stem != stem for n in names), names


# ============================================================== 2. a crash names the batch's samples
class _Recorder(L.Callback):
    def __init__(self):
        self.ids = {}
        self.weights = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids[batch_idx] = [str(x) for x in batch.get("query_name", batch.get("path"))]
        self.weights[batch_idx] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _trainer(tmp, callbacks=(), **kw):
    return L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
                     num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks), **kw)


def _episodes_dm(**kw):
    return EpisodicDataModule(**dict(dict(dataset="synthetic", shots=1, image_size=112, batch_size=2,
                                          train_episodes_per_epoch=8, val_episodes=2, test_episodes=2), **kw))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["fewshot", "distillation"])
def test_training_error_names_the_batch(which, tmp_path, monkeypatch):
    """An exception inside a training step carries the global step and the batch's sample ids."""
    L.seed_everything(0)
    if which == "fewshot":
        module, dm, fn = FewShotModule(**tiny_module_args("compact")), _episodes_dm(), "episode_loss"
    else:
        module = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=28)
        dm, fn = UnlabelledDataModule(root=None, image_size=64, batch_size=2, synthetic_images=8, val_fraction=0), None
    assert isinstance(module, SampleTrackingMixin)
    calls = {"n": 0}
    target = module if fn else module.adapter
    name = fn or "forward"
    original = getattr(target, name)

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in the step")
        return original(*a, **k)
    monkeypatch.setattr(target, name, boom)
    rec = _Recorder()
    with pytest.raises(RuntimeError, match="boom") as e:
        _trainer(tmp_path, [rec]).fit(module, dm)
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "train batch 1" in notes and "global step 1" in notes, notes
    for sample in rec.ids[1]:
        assert sample in notes, (sample, notes)


def test_loader_error_names_the_file(tmp_path):
    """A BadSampleError raised in a DataLoader worker process during fit names the file."""
    root = tmp_path / "data"
    make_folder(root, n=3, size=(56, 56))
    (root / "images" / "1.jpg").write_bytes(b"garbage")
    dm = EpisodicDataModule(dataset="folder", root=str(root), shots=1, image_size=112, batch_size=2,
                            train_episodes_per_epoch=8, num_workers=2, augment=False)
    with pytest.raises(BadSampleError) as e:  # the type survives the worker process
        _trainer(tmp_path).fit(FewShotModule(**tiny_module_args("compact")), dm)
    assert e.value.path.endswith("images/1.jpg"), e.value.path
    assert "images/1.jpg" in str(e.value) and "cannot decode" in str(e.value)


# ======================================================================== 3. non-finite loss
class _NaNImage(L.Callback):
    """Poisons the query images of training batch ``at`` (NaN pixels flow through the whole model)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            batch["query"][0, :, :8, :8] = float("nan")


@pytest.mark.slow
def test_nonfinite_loss_raise_names_step_and_samples_weights_untouched(tmp_path):
    L.seed_everything(0)
    module = FewShotModule(**tiny_module_args("compact"), nonfinite="raise")
    rec = _Recorder()
    with pytest.raises(NonFiniteLossError) as e:
        _trainer(tmp_path, [rec, _NaNImage(2)]).fit(module, _episodes_dm())
    msg = str(e.value)
    assert "global step 2" in msg and "Weights were not updated" in msg
    assert all(s in msg for s in rec.ids[2]), msg
    after = module.state_dict()
    for k, v in rec.weights[2].items():
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(rec.weights[0][k], rec.weights[2][k]) for k in after)  # earlier steps did train


@pytest.mark.slow
def test_nonfinite_loss_skip_counts_and_continues(tmp_path):
    L.seed_everything(0)
    module = FewShotModule(**tiny_module_args("compact"), nonfinite="skip")
    rec = _Recorder()
    _trainer(tmp_path, [rec, _NaNImage(1)]).fit(module, _episodes_dm())
    assert module.guard.skipped == 1
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())
    w1, w2, end = rec.weights[1], rec.weights[2], module.state_dict()
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert all(torch.equal(w1[k], w2[k]) for k in trainable)  # the poisoned step changed nothing
    assert any(not torch.equal(w2[k], end[k]) for k in trainable)  # training went on afterwards


# ================================================== 4./5. interrupted run, determinism (via the CLI)
STEPS_PER_EPOCH = 4
KILL_STEP = random.Random(8).randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH - 1)  # inside epoch 2
FIT_ARGS = [*TINY_FEWSHOT, "--model.init_args.segmenter.method", "compact", "--data.init_args.batch_size", "2",
            "--data.init_args.train_episodes_per_epoch", str(2 * STEPS_PER_EPOCH),
            "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "6",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "2"]


def _ckpt_cbs(d: Path, extra: str = "") -> list[str]:
    return ["--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
                                   f'{{"dirpath": "{d}", "save_last": true, "save_top_k": 1}}}}{extra}]']


def _all_ckpts_load(d: Path) -> list[dict]:
    files = sorted(d.glob("*.ckpt"))
    assert files, d
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted fit, and one SIGKILLed at KILL_STEP then resumed from last.ckpt (same seed)."""
    t = tmp_path_factory.mktemp("runs")
    full, part = t / "full", t / "part"
    run_fsseg(["fit", *FIT_ARGS, "--trainer.default_root_dir", str(full), *csv_logger(full),
               *_ckpt_cbs(full / "ckpt")], cwd=t)
    killer = f', {{"class_path": "tests.fault_injection.SigkillAtStep", "init_args": {{"step": {KILL_STEP}}}}}'
    killed = run_fsseg(["fit", *FIT_ARGS, "--trainer.default_root_dir", str(part), *csv_logger(part),
                        *_ckpt_cbs(part / "ckpt", killer)], cwd=t, check=False)
    after_kill = _all_ckpts_load(part / "ckpt")
    run_fsseg(["fit", *FIT_ARGS, "--trainer.default_root_dir", str(part), *csv_logger(part / "resumed"),
               *_ckpt_cbs(part / "ckpt"), "--ckpt_path", str(part / "ckpt" / "last.ckpt")], cwd=t)
    return {"dir": t, "full": full, "part": part, "killed": killed, "after_kill": after_kill}


@pytest.mark.slow
def test_fewshot_sigkill_resume_same_weights_and_val_metrics(runs):
    assert runs["killed"].returncode == -signal.SIGKILL, runs["killed"].stderr[-2000:]
    # every checkpoint left by the killed run is whole; last.ckpt is the end of epoch 1
    assert {c["global_step"] for c in runs["after_kill"]} == {STEPS_PER_EPOCH}
    for d in (runs["full"], runs["part"]):
        _all_ckpts_load(d / "ckpt")
    a = torch.load(runs["full"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(runs["part"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    full_rows, res_rows = read_metrics(runs["full"]), read_metrics(runs["part"] / "resumed")
    for key in ("val/miou", "val/fbiou", "val/loss"):
        assert last_value(full_rows, key) == last_value(res_rows, key), key


def _fsseg_test(runs, ckpt: Path, name: str, extra=()) -> tuple:
    out = runs["dir"] / name
    run_fsseg(["test", *FIT_ARGS, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(out),
               *csv_logger(out), *extra], cwd=runs["dir"])
    rows = read_metrics(out)
    return tuple(last_value(rows, k) for k in ("test/miou", "test/fbiou", "test/loss"))


@pytest.mark.slow
def test_fsseg_test_deterministic_across_runs_workers_and_resume(runs):
    """`fsseg test` of the uninterrupted run with 0 and 2 workers, and of the resumed run's checkpoint
    (identical weights, so also a repeated run): bit-identical metrics. 1 vs 2 DDP processes:
    tests/test_cli_training.py::test_ddp_two_cpu_processes_match_one_process."""
    a = _fsseg_test(runs, runs["full"] / "ckpt" / "last.ckpt", "test_w0")
    b = _fsseg_test(runs, runs["full"] / "ckpt" / "last.ckpt", "test_w2", ["--data.init_args.num_workers", "2"])
    c = _fsseg_test(runs, runs["part"] / "ckpt" / "last.ckpt", "test_resumed")
    assert a == b == c, (a, b, c)


# ================================================================================ 6. safe loading
def test_every_checkpoint_load_in_the_code_base_is_weights_only(repo):
    calls = []
    for d in ("fsseg", "data_modules", "callbacks"):
        for f in (repo / d).rglob("*.py"):
            text = f.read_text()
            for m in re.finditer(r"(torch\.load|load_from_checkpoint)\(", text):
                depth, i = 0, m.end() - 1
                while True:  # the whole call, up to its closing parenthesis
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    if depth == 0:
                        break
                    i += 1
                calls.append((f"{f.relative_to(repo)}:{text[:m.start()].count(chr(10)) + 1}", text[m.start():i + 1]))
    assert calls
    bad = [loc for loc, call in calls if "weights_only=True" not in call]
    assert not bad, bad


class Payload:  # anything that is not a tensor / plain value
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.slow
def test_cli_loads_checkpoints_weights_only(runs, tmp_path):
    """`fsseg fit|validate|test|predict` default to `--weights_only true`; a checkpoint with pickled
    code is refused; a real FewShotModule checkpoint loads both ways (see the determinism test, which
    uses the default) including ``FewShotModule.load_from_checkpoint(weights_only=True)``."""
    proc = run_fsseg(["test", "--print_config"], cwd=tmp_path)
    assert re.search(r"^weights_only: true$", proc.stdout, re.M), proc.stdout[-2000:]
    ck = torch.load(runs["full"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    ck["extra"] = Payload()
    torch.save(ck, tmp_path / "evil.ckpt")
    proc = run_fsseg(["test", *FIT_ARGS, "--ckpt_path", str(tmp_path / "evil.ckpt"), "--trainer.logger", "false"],
                     cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "pickled code ran" not in proc.stdout
    assert "weights_only" in proc.stderr.lower() or "Weights only load failed" in proc.stderr, proc.stderr[-2000:]
    m = FewShotModule.load_from_checkpoint(runs["full"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert m.hparams.segmenter == {"name": "tiny", "method": "compact"}
