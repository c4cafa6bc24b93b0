"""FewShotIoU against hand-computed values (fsseg.metrics; the pooled IoU of the HSNet / PFENet protocol)."""

import pytest
import torch

from fsseg.metrics import FewShotIoU, binarize_multiclass


def _t(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_pooled_iou_matches_hand_computation_with_ignore_pixels():
    m = FewShotIoU(num_classes=5)
    # Episode A, class 2: 2x3 image, one ignore pixel.
    pred_a = _t([[1, 1, 0], [0, 0, 0]])
    tgt_a = _t([[1, 255, 0], [1, 0, 0]])
    # fg: pred {(0,0),(0,1)->ignored}, tgt {(0,0),(1,0)} -> I=1, U=2
    # bg: pred bg valid {(0,2),(1,0),(1,1),(1,2)}, tgt bg {(0,2),(1,1),(1,2)} -> I=3, U=4
    # Episode B, class 2: big object, perfectly segmented: fg I=4, U=4; bg I=2, U=2
    pred_b = _t([[1, 1, 0], [1, 1, 0]])
    tgt_b = _t([[1, 1, 0], [1, 1, 0]])
    # Episode C, class 4: prediction empty, target 1 pixel: fg I=0, U=1; bg I=5, U=6
    pred_c = _t([[0, 0, 0], [0, 0, 0]])
    tgt_c = _t([[0, 0, 0], [0, 0, 1]])
    m.update(torch.stack([pred_a, pred_b]), torch.stack([tgt_a, tgt_b]), torch.tensor([2, 2]))
    m.update(pred_c[None], tgt_c[None], torch.tensor([4]))
    out = m.compute()
    iou2 = (1 + 4) / (2 + 4)
    iou4 = 0 / 1
    assert out["iou_per_class"][2] == pytest.approx(100 * iou2)
    assert out["iou_per_class"][4] == pytest.approx(0.0)
    assert set(out["iou_per_class"]) == {2, 4}  # unseen classes do not enter the mean
    assert out["miou"] == pytest.approx(100 * (iou2 + iou4) / 2)
    fg = (1 + 4 + 0) / (2 + 4 + 1)
    bg = (3 + 2 + 5) / (4 + 2 + 6)
    assert out["fbiou"] == pytest.approx(100 * (fg + bg) / 2)
    # The field's pooled IoU differs from the naive mean of per-episode IoUs:
    naive = 100 * ((1 / 2 + 4 / 4) / 2 + 0) / 2
    assert abs(out["miou"] - naive) > 1.0


def test_ignore_pixels_do_not_count_even_when_predicted():
    m = FewShotIoU(num_classes=1)
    pred = _t([[1, 1], [1, 1]])[None]
    tgt = _t([[1, 255], [255, 255]])[None]
    m.update(pred, tgt, torch.tensor([0]))
    assert m.compute()["miou"] == pytest.approx(100.0)


def test_reset_and_state_sum_like_ddp_reduction():
    a, b, whole = FewShotIoU(3), FewShotIoU(3), FewShotIoU(3)
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 2, (6, 8, 8), generator=g)
    tgts = torch.randint(0, 2, (6, 8, 8), generator=g)
    cls = torch.tensor([0, 1, 2, 0, 1, 1])
    a.update(preds[:3], tgts[:3], cls[:3])
    b.update(preds[3:], tgts[3:], cls[3:])
    whole.update(preds, tgts, cls)
    # DDP sums the states (dist_reduce_fx="sum"): emulate it and compare.
    a.intersection += b.intersection
    a.union += b.union
    a.episodes += b.episodes
    assert a.compute()["miou"] == pytest.approx(whole.compute()["miou"])
    whole.reset()
    assert whole.compute()["miou"] == 0.0


def test_bad_input_is_rejected():
    m = FewShotIoU(2)
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), torch.tensor([0]))


def test_multiclass_episode_binarised_per_class():
    pred = _t([[0, 1, 2], [2, 2, 0]])[None]
    tgt = _t([[0, 1, 2], [2, 255, 1]])[None]
    p, t, c = binarize_multiclass(pred, tgt, torch.tensor([[7, 3]]))
    assert c.tolist() == [7, 3]
    m = FewShotIoU(10)
    m.update(p, t, c)
    out = m.compute()["iou_per_class"]
    assert out[7] == pytest.approx(100 * 1 / 2)  # class 1: pred {(0,1)}, tgt {(0,1),(1,2)}
    assert out[3] == pytest.approx(100 * 2 / 2)  # class 2: ignore pixel (1,1) excluded
