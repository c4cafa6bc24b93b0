"""fsseg.checkpoint_io: checkpoints are written atomically (a SIGKILL never leaves a torn file), and
every trainer the CLI builds writes them that way."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest
import torch


def _rewrite_forever(path: str, naive: bool, q) -> None:
    from fsseg.checkpoint_io import AtomicCheckpointIO

    torch.set_num_threads(1)
    io = AtomicCheckpointIO()
    i = 0
    while True:
        ck = {"state_dict": {"w": torch.full((4_000_000,), float(i))}, "i": i}
        torch.save(ck, path) if naive else io.save_checkpoint(ck, path)
        q.put(i)
        i += 1


@pytest.mark.slow
def test_checkpoint_write_is_atomic(tmp_path):
    """fsseg's trainers write checkpoints with ``AtomicCheckpointIO``: a temporary file in the same
    folder, fsync, ``os.replace``. SIGKILL a process that rewrites a large checkpoint in a loop at
    random moments: the file always loads and is one whole version, whatever $TMPDIR is. A plain
    ``torch.save`` to the same path, killed the same way, is left corrupt -- the test can tell."""
    rng = random.Random(0)

    def kill_and_check(naive: bool) -> list[bool]:
        path = tmp_path / ("naive.ckpt" if naive else "last.ckpt")
        ok = []
        ctx = mp.get_context("fork")  # no re-import: the writer starts at once
        for _ in range(4):
            q = ctx.Queue()
            p = ctx.Process(target=_rewrite_forever, args=(str(path), naive, q))
            t0 = time.time()
            p.start()
            q.get(timeout=60)  # one whole version exists
            q.get(timeout=60)
            time.sleep(rng.uniform(0, (time.time() - t0) / 2))
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            try:
                ck = torch.load(path, map_location="cpu", weights_only=True)
                ok.append(bool((ck["state_dict"]["w"] == ck["i"]).all()))
            except Exception:  # noqa: BLE001 - a torn file fails in many ways
                ok.append(False)
        return ok

    assert all(kill_and_check(naive=False))
    assert not all(kill_and_check(naive=True))


def test_cli_trainers_write_checkpoints_atomically():
    from fsseg.checkpoint_io import AtomicCheckpointIO
    from fsseg.cli import run_cli

    cli = run_cli(["--trainer.logger", "false", "--model.init_args.segmenter", "{name: tiny}",
                   "--model.init_args.image_size", "112"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
