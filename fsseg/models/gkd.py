"""GKD's query-based soft distillation (seed 001), as an alternative stage-1 objective.

GKD lets *student features act as queries* over the teacher's tokens, so each student location
retrieves a soft mixture of the teacher's spatial knowledge instead of being pinned to the one
teacher token at the same place. Our reading, written down because the source text is only an
abstract:

    A   = softmax_j( <W_q s_i, W_k t_j> / (sqrt(d) * temperature) )      student i attends teacher j
    L   = || A t  -  A s ||^2 / N   +   direct_weight * || s - t ||^2 / N

* ``A t`` is what student location i retrieves from the teacher; ``A s`` is the same mixture of the
  student's own tokens, so the loss is zero exactly when student and teacher agree, whatever A is.
* The attention is computed under ``stop_gradient`` on its inputs (``detach_attention=True``): the
  student is pulled towards what it retrieves, and cannot lower the loss by flattening A.
  W_q and W_k start as identity and are trained to pick which teacher tokens are worth retrieving
  (the "selective" part); with ``learnable=False`` the attention is plain scaled cosine similarity.
* ``direct_weight`` keeps a share of the paper-3.3 location-wise MSE (0.5 by default).

Both maps must already be on one grid (the distillation module resamples the teacher).
The two-stage GKD schedule (distil the representation, then freeze it for the task) is exactly our
stage 1 -> stage 2 split, where the adapter is frozen during episodic training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QueryBasedSoftDistillation(nn.Module):
    def __init__(self, dim: int, temperature: float = 1.0, direct_weight: float = 0.5, learnable: bool = True,
                 detach_attention: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.direct_weight = direct_weight
        self.detach_attention = detach_attention
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(dim))
            self.key.weight.copy_(torch.eye(dim))
        if not learnable:
            self.query.weight.requires_grad_(False)
            self.key.weight.requires_grad_(False)

    def attention(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student`` ``[B,N,C]``, ``teacher`` ``[B,M,C]`` -> ``A`` ``[B,N,M]``."""
        s, t = (student.detach(), teacher.detach()) if self.detach_attention else (student, teacher)
        q = F.normalize(self.query(s), dim=-1)
        k = F.normalize(self.key(t), dim=-1)
        # cosine logits scaled like dot-product attention on unit vectors of dimension C
        logits = q @ k.transpose(1, 2) * (q.shape[-1] ** 0.5) / self.temperature
        return logits.softmax(dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student``, ``teacher``: ``[B,C,H,W]`` on the same grid -> scalar loss."""
        if student.shape != teacher.shape:
            raise ValueError(f"GKD needs student and teacher on one grid, got {tuple(student.shape)} "
                             f"and {tuple(teacher.shape)}")
        s = student.flatten(2).transpose(1, 2)  # [B,N,C]
        t = teacher.flatten(2).transpose(1, 2)
        attn = self.attention(s, t)
        soft = F.mse_loss(attn @ s, attn @ t)
        if self.direct_weight:
            return soft + self.direct_weight * F.mse_loss(s, t)
        return soft
