"""What a specialisation run says when its fit ends: where the student went, how to predict and export
with it, and its quality (``val/miou`` with labelled val photos, else the teacher's leave-one-out
estimate and the student's fit on its own supports)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


class SpecializationReportMixin:
    """``SpecializeModule``'s end-of-fit report (needs its ``teacher_logits``, ``student``, ``_support``)."""

    @torch.no_grad()
    def support_quality(self) -> dict:
        """Foreground IoU per class on the support images (pooled over the shots): ``teacher_loo``, the
        episodic teacher segmenting each support from the other K-1 (an estimate for unseen photos;
        classes with K = 1 are left out), and ``student_fit``, the student on the supports it was
        trained on (optimistic)."""
        if self._support is None or self.student is None:
            return {}
        sums = {"teacher_loo": {}, "student_fit": {}}
        was_training = self.student.training
        self.student.eval()
        for c, (images, masks) in enumerate(zip(self._support["images"], self._support["masks"])):
            name = self.student.class_names[c]
            for k in range(images.shape[0]):
                image = images[k:k + 1].to(self.device, torch.float32)
                target = masks[k].to(self.device) > 0.5
                feats = self.student.extract(image)
                size = tuple(image.shape[-2:])
                preds = {"student_fit": self.student.decode(feats, out_size=size)["pred"][0]}
                if images.shape[0] > 1 and self.hparams.leave_one_out:
                    shot = torch.tensor([k], device=self.device)
                    preds["teacher_loo"] = self.teacher_logits(feats, size, shot).argmax(1)[0]
                for key, pred in preds.items():
                    fg = pred == c + 1
                    inter, union = sums[key].get(name, (0, 0))
                    sums[key][name] = (inter + int((fg & target).sum()), union + int((fg | target).sum()))
        self.student.train(was_training)
        return {key: {n: i / u if u else 1.0 for n, (i, u) in per.items()} for key, per in sums.items() if per}

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        cb = self.trainer.checkpoint_callback
        path = ""
        if cb is not None:  # without a monitored metric the "best" is only the latest epoch: last.ckpt
            first, second = ("best_model_path", "last_model_path") if getattr(cb, "monitor", None) else \
                ("last_model_path", "best_model_path")
            path = getattr(cb, first, "") or getattr(cb, second, "")
        if path:
            path = str(Path(path).resolve())
            print(f"specialised model: {path}\n  predict (no supports): fsseg predict --config "
                  f"lightning_configs/specialize_folder.yaml --data.support_dir null --data.query_dir PHOTOS "
                  f"--ckpt_path {path}\n  deploy: fsseg export --ckpt_path {path} --output_dir export/",
                  file=sys.stderr)
        val = self.trainer.callback_metrics.get("val/miou")
        if val is not None:
            print(f"quality: val/miou {100 * float(val):.1f}% on the val_dir photos", file=sys.stderr)
            return
        quality = self.support_quality()
        if not quality:
            return
        parts = []
        for key, label in (("teacher_loo", "leave-one-out (each support segmented by the teacher from the other "
                                           "K-1; an estimate for new photos)"),
                           ("student_fit", "the student on its own training supports (optimistic)")):
            if key in quality:
                per = quality[key]
                mean = sum(per.values()) / len(per)
                detail = ", ".join(f"{n} {100 * v:.1f}%" for n, v in per.items())
                parts.append(f"  {label}: foreground IoU {100 * mean:.1f}% ({detail})")
        print("quality (no val_dir; give --data.val_dir labelled photos for a real score):\n" + "\n".join(parts),
              file=sys.stderr)
