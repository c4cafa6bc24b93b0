"""A DDP rank for tests/test_fsseg_metrics_scoring.py, kept in a light module (torch + fsseg.metrics only) so that
spawned processes start quickly."""

from __future__ import annotations

import torch

from fsseg.metrics import FewShotIoU


def seeded_episodes():
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randint(0, 2, (9, 5, 7), generator=g), torch.randint(0, 2, (9, 5, 7), generator=g)
    tgt[:, 0] = 255
    return pred, tgt, torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0]), torch.tensor([0, 1, 2] * 3)


def seeded_rank(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    pred, tgt, cls, seeds = seeded_episodes()
    m = FewShotIoU(3, num_seeds=3)
    m.update(pred[rank::world], tgt[rank::world], cls[rank::world], seeds[rank::world])  # strided share
    result = m.compute()  # torchmetrics sums the states across the process group
    if rank == 0:
        torch.save(result, out)
    torch.distributed.destroy_process_group()
