"""Multi-process training as on a node of several GPUs, emulated with DDP on 2 CPU processes (gloo):
every rank gets the same number of batches, a skipped non-finite step is skipped by all ranks."""

from __future__ import annotations

import math

import pytest
import yaml

from data_modules.episodes import TrainEpisodeSampler
from tests.cli_utils import csv_logger, read_metrics, run_fsseg
from tests.paths import CONFIGS

DDP2 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]


@pytest.mark.slow
def test_ddp_fit_with_fewer_episodes_than_an_even_split_finishes(tmp_path, tiny_fewshot):
    """3 training episodes, batch 1, 2 ranks: rank 0 had 2 batches, rank 1 had 1 and the run waited
    forever in rank 0's second gradient all-reduce. Now both ranks take 2 steps per epoch."""
    run_fsseg(["fit", *tiny_fewshot, "--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "1",
               "--data.init_args.train_episodes_per_epoch", "3", "--data.init_args.val_episodes", "3",
               "--trainer.max_epochs", "2", *DDP2, "--trainer.default_root_dir", str(tmp_path),
               *csv_logger(tmp_path)], cwd=tmp_path, timeout=240)
    steps = {int(r["step"]) for r in read_metrics(tmp_path) if r.get("train/loss")}
    assert max(steps) == 3  # 2 epochs x 2 steps, counted from 0


def test_train_sampler_gives_every_rank_the_same_number_of_draws():
    for length in (1, 3, 7, 8, 1001):
        one = list(TrainEpisodeSampler(length, 1, 0))
        assert one == list(range(length))  # the 1-process list is unchanged
        for world in range(2, 9):
            for epoch in (0, 3):
                shares = []
                for rank in range(world):
                    s = TrainEpisodeSampler(length, world, rank)
                    s.set_epoch(epoch)
                    shares.append(list(s))
                    assert len(s) == len(shares[-1])
                assert {len(x) for x in shares} == {math.ceil(length / world)}
                ids = [i for x in shares for i in x]
                assert len(set(ids)) == len(ids)  # extra draws are new draw ids, no repeats


def _one_pass_configs():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        data = (cfg.get("data") or {}) if isinstance(cfg.get("data"), dict) else {}
        args = data.get("init_args") or {}
        if "train_episodes_per_epoch" in args and args["train_episodes_per_epoch"] is None:
            yield path, int(args["batch_size"])


def test_one_pass_configs_give_every_rank_the_same_number_of_batches():
    """Every shipped config with ``train_episodes_per_epoch: null`` (an epoch = one pass over the
    training list, whose length depends on the data): the loader gives each of W = 2..8 ranks the
    same number of batches for every epoch length up to 3000."""
    from torch.utils.data import DataLoader

    configs = list(_one_pass_configs())
    names = {path.name for path, _ in configs}
    assert {"pascal5i_hdmnet.yaml", "coco20i_hdmnet.yaml", "pascal5i_hsnet.yaml", "coco20i_hsnet.yaml"} <= names
    for batch_size in sorted({b for _, b in configs}):
        for world in range(2, 9):
            for length in range(1, 3001):
                counts = {len(DataLoader(range(length), batch_size=batch_size,
                                         sampler=TrainEpisodeSampler(length, world, rank)))
                          for rank in range(world)}
                assert len(counts) == 1, (batch_size, world, length, counts)


@pytest.mark.slow
def test_ddp_nonfinite_loss_on_one_rank_is_skipped_on_both(tmp_path, tiny_fewshot):
    """``nonfinite: skip`` with a NaN loss on rank 1 only: both ranks skip that step (rank 0 alone
    used to wait in the gradient all-reduce for ever) and the run finishes."""
    import json

    cb = (f'[{{"class_path": "tests.fault_injection.NaNQueryOnRank", "init_args": '
          f'{{"at": 1, "rank": 1, "record_dir": "{tmp_path}"}}}}]')
    run_fsseg(["fit", *tiny_fewshot, "--model.init_args.segmenter.method", "compact", "--model.init_args.nonfinite", "skip",
               "--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "1",
               "--data.init_args.train_episodes_per_epoch", "6", "--data.init_args.val_episodes", "2",
               "--trainer.max_epochs", "1", *DDP2, "--trainer.default_root_dir", str(tmp_path),
               "--trainer.callbacks", cb], cwd=tmp_path, timeout=240)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skipped"] for r in records] == [1, 1]
    assert [r["unchanged"] for r in records] == [True, True]  # the skipped step moved no weight
    assert records[0]["global_step"] == records[1]["global_step"]


@pytest.mark.slow
def test_sigterm_ends_a_fit_stuck_in_native_code(tmp_path, tiny_fewshot):
    """A cluster's time limit sends SIGTERM: a run stuck where Lightning's handler cannot stop it
    exits with 143 after ``--sigterm_grace_s`` (it used to ignore SIGTERM; only SIGKILL ended it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.paths import REPO

    marker = tmp_path / "stalled"
    cb = (f'[{{"class_path": "tests.fault_injection.StallAtStep", "init_args": '
          f'{{"at": 1, "marker": "{marker}"}}}}]')
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    proc = subprocess.Popen([sys.executable, "-m", "fsseg.cli", "fit", *tiny_fewshot, "--model.init_args.segmenter.method",
                             "compact", "--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "1",
                             "--data.init_args.train_episodes_per_epoch", "4", "--trainer.max_epochs", "1",
                             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                             "--trainer.default_root_dir", str(tmp_path), "--sigterm_grace_s", "2",
                             "--trainer.callbacks", cb], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "never reached step 1"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 143, f"exit code {rc} 30 s after SIGTERM"
        err = proc.stderr.read()
        assert "killing its child processes and exiting" in err, err[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_gpu_defaults_for_loaders_and_fp32_matmuls():
    """On a CUDA trainer (emulated: what the loaders read of it) batches are pinned, workers persist
    whenever there are workers, and fp32 matmuls use TF32; each is overridable."""
    from types import SimpleNamespace

    import torch

    from data_modules import EpisodicDataModule, UnlabelledDataModule
    from data_modules.datamodules.loading import loader_transport
    from fsseg.precision import set_float32_matmul

    cuda = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), global_rank=0, world_size=1)
    cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=0, world_size=1)
    assert loader_transport(cuda, 4) == {"pin_memory": True, "persistent_workers": True}
    assert loader_transport(cpu, 0) == {"pin_memory": False, "persistent_workers": False}
    assert loader_transport(cuda, 0, pin_memory=False, persistent_workers=True) == \
        {"pin_memory": False, "persistent_workers": False}  # no workers to keep
    dm = EpisodicDataModule(dataset="synthetic", image_size=56, num_workers=2, train_episodes_per_epoch=4,
                            val_episodes=2)
    dm.trainer = cuda
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.pin_memory and train.persistent_workers and val.pin_memory and val.persistent_workers
    udm = UnlabelledDataModule(image_size=32, synthetic_images=4, num_workers=1, pin_memory=False)
    udm.trainer = cuda
    loader = udm.train_dataloader()
    assert not loader.pin_memory and loader.persistent_workers

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert set_float32_matmul("auto", "cpu") == "highest" == torch.get_float32_matmul_precision()
        assert set_float32_matmul("auto", "cuda:0") == "high" == torch.get_float32_matmul_precision()
        assert set_float32_matmul("highest", "cuda") == "highest" == torch.get_float32_matmul_precision()
        with pytest.raises(ValueError, match="not one of"):
            set_float32_matmul("tf32", "cuda")
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.slow
def test_curriculum_on_two_ranks_switches_both_and_shares_the_teacher_cache(tmp_path, tiny_distill):
    """Stage 1's curriculum (126 -> 252 -> 518 at test sizes 28 -> 42 -> 56) in one run on 2 gloo
    ranks: both switch resolution at the same epochs, the run finishes, and the teacher cache filled
    by both ranks at once serves every later epoch (each image encoded by the teacher once in all)."""
    import json

    cache = tmp_path / "cache"
    cbs = (f'[{{"class_path": "callbacks.ResolutionCurriculum", "init_args": {{"resolutions": [28, 42, 56], '
           f'"epochs_per_stage": 1}}}}, {{"class_path": "callbacks.TeacherEmbeddingCache", "init_args": '
           f'{{"cache_dir": "{cache}"}}}}, {{"class_path": "tests.fault_injection.RecordRankState", '
           f'"init_args": {{"record_dir": "{tmp_path}"}}}}]')
    run_fsseg(["fit", "--config", str(CONFIGS / "distill_curriculum.yaml"), *tiny_distill,
               "--data.init_args.synthetic_images", "16", "--data.init_args.val_fraction", "0.25",
               "--trainer.max_epochs", "3", *DDP2, "--trainer.default_root_dir", str(tmp_path),
               "--trainer.logger", "false", "--trainer.callbacks", cbs], cwd=tmp_path, timeout=300)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["resolutions"] for r in records] == [[28, 42, 56]] * 2
    assert all(r["teacher_calls"] > 0 for r in records)  # both ranks filled the cache
    assert sum(r["teacher_calls"] for r in records) == 16  # 12 training + 4 validation images, once each


def test_sigterm_watch_ignores_a_signal_sent_to_a_forked_child():
    """A loader worker is a forked child; one stopped with SIGTERM must not end the training
    process (the child writes nothing to the parent's wakeup socket)."""
    import os
    import subprocess
    import sys
    import textwrap

    from tests.paths import REPO

    code = textwrap.dedent("""
        import os, signal, sys, time
        from fsseg.termination import exit_on_sigterm
        signal.signal(signal.SIGTERM, lambda s, f: None)  # as Lightning's handler (inherited by the child)
        assert exit_on_sigterm(0.5)
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        time.sleep(2)  # the child's handler ran; the parent is still here after the grace
        os.kill(pid, signal.SIGKILL)
        print("alive")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", (proc.returncode, proc.stderr[-2000:])


def test_cli_applies_float32_matmul_and_the_kernel_switch(tmp_path, tiny_fewshot):
    """``--float32_matmul`` is applied when the trainer is built (``auto`` on this CPU leaves torch's
    default), and ``--cpu_kernels false`` turns fsseg's CPU kernels off."""
    import torch

    from fsseg.cli import run_cli
    from fsseg.kernels import cpu_kernels, cpu_kernels_enabled

    before, enabled = torch.get_float32_matmul_precision(), list(cpu_kernels._enabled)
    try:
        torch.set_float32_matmul_precision("highest")
        run_cli([*tiny_fewshot, "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)], run=False)
        assert torch.get_float32_matmul_precision() == "highest" and cpu_kernels_enabled()
        run_cli([*tiny_fewshot, "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path),
                 "--float32_matmul", "medium", "--cpu_kernels", "false"], run=False)
        assert torch.get_float32_matmul_precision() == "medium" and not cpu_kernels_enabled()
    finally:
        torch.set_float32_matmul_precision(before)
        cpu_kernels._enabled[:] = enabled
