"""Pieces every fsseg LightningModule shares: non-finite loss handling, the samples of a failing
batch, and portable checkpoints without the frozen weights."""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import lightning as L
import torch

log = logging.getLogger("fsseg")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the step and the batch's samples."""


def batch_sample_ids(batch: dict) -> list[str]:
    for key in ("query_name", "path", "name"):
        if key in batch:
            return [str(x) for x in batch[key]]
    if "episode_index" in batch:
        return [f"episode {int(i)}" for i in batch["episode_index"]]
    return ["<unnamed>"]


class NonFiniteLossGuard:
    """``raise`` (default): stop at once, naming the global step and the batch's sample ids, before
    the optimizer can write NaNs into the weights. ``skip``: return False so the step returns
    ``skipped_step`` (the optimizer step changes nothing), and count it.

    Under DDP the decision is taken across ranks (a sum of the ranks' flags): a rank that skipped its
    backward alone would leave the others waiting in the gradient all-reduce for ever, and one that
    raised alone would do the same to the others. So every rank skips, or raises, together."""

    def __init__(self, policy: str = "raise") -> None:
        if policy not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self.drop_gradients = False  # a skipped DDP step: the optimizer step must change nothing

    def skipped_step(self, module: L.LightningModule) -> Optional[torch.Tensor]:
        """What ``training_step`` returns for a skipped step. One process: None (Lightning skips the
        backward and the optimizer step). Under DDP Lightning refuses None, and every rank must run
        its backward for the gradient all-reduce to complete: a zero loss on every trainable
        parameter (zero gradients, nothing non-finite reaches the all-reduce), and the gradients are
        dropped just before the optimizer step (``GuardedStepMixin``), which then changes nothing,
        as with one process."""
        trainer = module._trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        self.drop_gradients = True
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    @staticmethod
    def _ranks_nonfinite(local: bool, module: L.LightningModule, device: torch.device) -> int:
        """How many ranks saw a non-finite loss at this step (``local`` as an int without DDP)."""
        trainer = module._trainer
        if trainer is None or trainer.world_size <= 1:
            return int(local)
        flag = torch.tensor(float(local), device=device)
        return int(trainer.strategy.reduce(flag, reduce_op="sum").item())

    def check(self, loss: torch.Tensor, module: L.LightningModule, batch: dict) -> bool:
        self.drop_gradients = False
        local = not bool(torch.isfinite(loss).all())
        ranks = self._ranks_nonfinite(local, module, loss.device)
        if ranks == 0:
            return True
        when = f"at global step {module.global_step}, epoch {module.current_epoch}"
        if local:
            msg = f"non-finite loss ({loss.item()}) {when}; samples: {', '.join(batch_sample_ids(batch))}"
        else:
            msg = f"non-finite loss on {ranks} other rank(s) {when} (this rank's loss: {loss.item():.4g})"
        if self.policy == "raise":
            raise NonFiniteLossError(msg + ". Weights were not updated. Set nonfinite: skip to drop such steps.")
        self.skipped += 1
        log.warning("skipping step: %s", msg)
        module.log("train/skipped_nonfinite", float(self.skipped))
        return False


class GuardedStepMixin:
    """Applies ``NonFiniteLossGuard.skipped_step`` under DDP: after the backward (and its gradient
    all-reduce), before the optimizer step, the gradients of a skipped step are dropped (``None``:
    torch's optimizers leave such parameters and their state untouched)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.guard.drop_gradients:
            self.guard.drop_gradients = False
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        super().on_before_optimizer_step(optimizer)


def drop_frozen_weights(checkpoint: dict, frozen_prefixes: Iterable[str]) -> None:
    """Remove frozen sub-modules (DINOv2, SAM teacher) from a Lightning checkpoint: they are reloaded
    from their official files named in the hyper-parameters, and a ViT-H teacher would otherwise add
    2.5 GB to every checkpoint."""
    prefixes = tuple(frozen_prefixes)
    state = checkpoint.get("state_dict", {})
    for k in [k for k in state if k.startswith(prefixes)]:
        del state[k]
    checkpoint["fsseg_frozen_prefixes"] = list(prefixes)


def check_checkpoint_matches(module: torch.nn.Module, checkpoint: dict, frozen_prefixes: Iterable[str]) -> None:
    """A checkpoint of another architecture gives a clear error instead of a silent partial load."""
    from fsseg.models.weights import CheckpointMismatchError, describe_state_mismatch

    prefixes = tuple(frozen_prefixes)
    ours = {k: v for k, v in module.state_dict().items() if not k.startswith(prefixes)}
    theirs = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith(prefixes)}
    parts = describe_state_mismatch(ours, theirs)
    if parts:
        hp = checkpoint.get("hyper_parameters", {})
        raise CheckpointMismatchError(
            f"checkpoint is for another architecture than {type(module).__name__} "
            f"(checkpoint hyper-parameters: { {k: hp[k] for k in list(hp)[:6]} }): " + "; ".join(parts))


# -- which samples was the trainer working on when it failed ------------------------------------
def _describe_batch(batch) -> list[str]:
    """Sample ids of a batch: query and support names of episodes, paths of unlabelled images."""
    if not isinstance(batch, dict):
        return []
    ids = batch_sample_ids(batch) if any(k in batch for k in ("query_name", "path", "name", "episode_index")) else []
    if "query_path" in batch:
        ids = [str(p) for p in batch["query_path"]]
    if "support_names" in batch:
        flat = []
        for names in batch["support_names"]:
            flat += [str(n) for n in names] if isinstance(names, (list, tuple)) else [str(names)]
        ids = ids + [f"support {n}" for n in flat]
    return ids


class _ReportFailingBatch(L.Callback):
    """Forwards Lightning's ``on_exception`` (called for callbacks, not for modules) to the module."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        hook = getattr(pl_module, "report_failing_batch", None)
        if hook is not None:
            hook(exception)


class SampleTrackingMixin:
    """Records the ids of the batch in progress (``on_*_batch_start``) and, when anything raises while
    that batch is processed, attaches them to the exception (``add_note``; shown in the traceback) and
    logs them: a crash always says which samples did it. Errors raised while a batch is *loaded* (a
    ``BadSampleError`` in the DataLoader) come before any batch is in progress; they name the file
    themselves (``BadSampleError.path``)."""

    _current_batch: Optional[dict] = None

    def _track(self, stage: str, batch, batch_idx: int) -> None:
        self._current_batch = {"stage": stage, "batch_idx": int(batch_idx), "ids": _describe_batch(batch),
                               "global_step": int(getattr(self, "global_step", 0) or 0),
                               "epoch": int(getattr(self, "current_epoch", 0) or 0)}

    def _untrack(self) -> None:
        self._current_batch = None

    def on_train_batch_start(self, batch, batch_idx: int):
        self._track("train", batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._untrack()

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._track("validation", batch, batch_idx)

    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._untrack()

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._track("test", batch, batch_idx)

    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._untrack()

    def failing_batch_message(self) -> Optional[str]:
        cur = self._current_batch
        if not cur:
            return None
        return (f"fsseg: failed in {cur['stage']} batch {cur['batch_idx']} (global step {cur['global_step']}, "
                f"epoch {cur['epoch']}); samples: {', '.join(cur['ids']) or '<unknown>'}")

    def report_failing_batch(self, exception: BaseException) -> None:
        msg = self.failing_batch_message()
        if msg is None or getattr(exception, "_fsseg_reported", False):
            return
        try:
            exception._fsseg_reported = True
        except Exception:  # noqa: BLE001 - some builtin exceptions refuse attributes
            pass
        if hasattr(exception, "add_note"):  # Python 3.11+
            exception.add_note(msg)
        log.error("%s: %s", type(exception).__name__, msg)

    def configure_callbacks(self):
        return [_ReportFailingBatch()]


class PortableCheckpointMixin:
    """Lightning hooks: frozen prefixes are left out of saved checkpoints and checked on load.

    Portable checkpoints (``fsseg.modules.checkpoints``): ``FROZEN_WEIGHT_ARGS`` maps each argument
    naming a frozen file to the state-dict prefix it fills; each such file is recorded in the
    checkpoint by official name, size and sha256 (not only by its path). ``INIT_ONLY_WEIGHT_ARGS``
    name files whose weights end up in the state dict, so a rebuilt model never reads them again.
    ``load_from_checkpoint`` rebuilds through the same lookup."""

    frozen_prefixes: tuple[str, ...] = ()
    FROZEN_WEIGHT_ARGS: dict[str, str] = {}
    INIT_ONLY_WEIGHT_ARGS: tuple[str, ...] = ()
    _frozen_records: Optional[list] = None

    def frozen_weight_records(self) -> list[dict]:
        """Records of the frozen files this module was built from (hashed once per module)."""
        if self._frozen_records is None:
            from fsseg.modules.checkpoints import frozen_weight_record

            hp = dict(self.hparams)
            self._frozen_records = [
                frozen_weight_record(arg, prefix, hp[arg], hp, hp.get(arg.replace("checkpoint", "sha256")))
                for arg, prefix in self.FROZEN_WEIGHT_ARGS.items() if hp.get(arg) and prefix in self.frozen_prefixes]
        return self._frozen_records

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from fsseg.modules.checkpoints import FROZEN_KEY

        drop_frozen_weights(checkpoint, self.frozen_prefixes)
        checkpoint[FROZEN_KEY] = self.frozen_weight_records()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only=True, **overrides):
        """Rebuild from ``checkpoint_path`` on any machine (``fsseg.modules.checkpoints``);
        ``overrides`` are constructor arguments given now (e.g. ``dinov2_checkpoint`` moved)."""
        from fsseg.modules.checkpoints import load_module_from_checkpoint

        return load_module_from_checkpoint(checkpoint_path, cls=cls, overrides=overrides, map_location=map_location)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_matches(self, checkpoint, self.frozen_prefixes)
        self.strict_loading = False  # frozen weights come from their own files, not the checkpoint
