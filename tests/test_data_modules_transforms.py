"""HDMNet's augmentation chain (data_modules.hdmnet_augment.HDMNetAugment, util/transform.py of HDMNet):
each step against OpenCV, the chain at the model size, and a fresh draw when a support loses its object."""

from __future__ import annotations

import cv2
import numpy as np

from data_modules import EpisodicDataModule
from data_modules.episodes import batch_to_model_dtypes
from data_modules.hdmnet_augment import HDMNetAugment


class _Draws:
    """A stand-in generator returning fixed ``random()`` values in order."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def _hand_image(h=40, w=60):
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2] = (200, 10, 50)
    img[5:15, 40:50] = (20, 220, 90)
    return img


def test_hdmnet_rand_scale_uses_one_factor_in_range():
    aug = HDMNetAugment(32, scale=(0.9, 1.1))
    label = np.zeros((40, 60), np.uint8)
    label[10:20, 30:40] = 1
    for u, s in ((0.0, 0.9), (1.0, 1.1), (0.5, 1.0)):
        img, (m,) = aug.rand_scale(_hand_image(), [label], _Draws(u))
        # cv2.resize(fx=fy=s) rounds the output size (transform.py:216-217)
        assert img.shape[:2] == m.shape == (round(40 * s), round(60 * s))
        assert set(np.unique(m)) <= {0, 1}  # nearest: no new label values
    rng = np.random.default_rng(0)
    for _ in range(50):
        img, _ = aug.rand_scale(_hand_image(100, 100), [np.zeros((100, 100), np.uint8)], rng)
        assert 90 <= img.shape[0] <= 110 and img.shape[0] == img.shape[1]


def test_hdmnet_rotation_pads_label_255_and_image_mean():
    aug = HDMNetAugment(32)
    label = np.ones((40, 60), np.uint8)
    img, (m,) = aug.rand_rotate(_hand_image(), [label], _Draws(0.1, 1.0))  # p hit, angle = +10 deg
    assert m.shape == (40, 60) and img.shape == (40, 60, 3)
    assert m[0, 0] == 255 and m[-1, -1] == 255 and m[20, 30] == 1
    assert set(np.unique(m)) == {1, 255}
    assert np.allclose(img[0, 0], (0.485 * 255, 0.456 * 255, 0.406 * 255))
    # cv2.getRotationMatrix2D((w/2, h/2), 10, 1): the rotation HDMNet applies (transform.py:337)
    expected = cv2.warpAffine(label, cv2.getRotationMatrix2D((30.0, 20.0), 10.0, 1), (60, 40),
                              flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    assert np.array_equal(m, expected)
    same_img, (same,) = aug.rand_rotate(_hand_image(), [label], _Draws(0.5))  # p = 0.5 not hit
    assert np.array_equal(same, label) and np.array_equal(same_img, _hand_image())


def test_hdmnet_blur_is_5x5_gaussian_and_flip_mirrors():
    aug = HDMNetAugment(32)
    impulse = np.zeros((11, 11, 3), np.float32)
    impulse[5, 5] = 1.0
    blurred, _ = aug.rand_blur(impulse, [], _Draws(0.2))
    # cv2.GaussianBlur(img, (5, 5), 0) (transform.py:371): with sigma 0 and ksize <= 7 OpenCV uses its
    # fixed binomial kernel [1, 4, 6, 4, 1] / 16 (getGaussianKernel's small-kernel table)
    g = np.array([1, 4, 6, 4, 1]) / 16
    assert np.allclose(blurred[3:8, 3:8, 0], np.outer(g, g), atol=1e-6)
    assert blurred[2, 5, 0] == 0  # 5x5 support only
    label = np.zeros((4, 6), np.uint8)
    label[1, 0] = 1
    label[2, 5] = 255
    img, (m,) = aug.rand_hflip(_hand_image(4, 6), [label], _Draws(0.3))
    assert m[1, 5] == 1 and m[2, 0] == 255 and np.array_equal(img, _hand_image(4, 6)[:, ::-1])
    _, (kept,) = aug.rand_hflip(_hand_image(4, 6), [label], _Draws(0.7))
    assert np.array_equal(kept, label)


def test_hdmnet_chain_resizes_to_model_size_and_episodes_use_it():
    aug = HDMNetAugment(48, scale=(0.8, 1.25))
    label = np.zeros((40, 60), np.uint8)
    label[10:30, 20:40] = 1
    img, (m,) = aug(_hand_image().astype(np.uint8), [label], np.random.default_rng(3))
    assert img.shape == (48, 48, 3) and img.dtype == np.float32 and m.shape == (48, 48)
    assert set(np.unique(m)) <= {0, 1, 255}
    dm = EpisodicDataModule(dataset="synthetic", image_size=48, synthetic_image_size=56, batch_size=2,
                            train_episodes_per_epoch=2, augmentation="hdmnet")
    dm.setup("fit")
    assert dm.datasets["train"].transform.hdmnet.scale == (0.9, 1.1)
    assert EpisodicDataModule(dataset="coco20i", augmentation="hdmnet").augmentation_scale == (0.8, 1.25)
    batch = batch_to_model_dtypes(next(iter(dm.train_dataloader())))  # uint8 batches -> float32 [0, 1]
    assert batch["query"].shape == (2, 3, 48, 48) and 0 <= batch["query"].min() and batch["query"].max() <= 1


def test_hdmnet_chain_draws_again_when_the_support_foreground_is_cut_away():
    from data_modules.transforms import PairTransform

    tf = PairTransform(32, train=True, augmentation="hdmnet")
    label = np.zeros((40, 60), np.uint8)
    label[0, 0] = 1  # a one-pixel object in the corner: lost whenever the rotation fires
    image = _hand_image().astype(np.uint8)
    lost = [s for s in range(200) if not (tf.hdmnet(image, [label], np.random.default_rng(s))[1][0] == 1).any()]
    assert lost  # the chain alone does lose it
    for s in lost[:5]:
        _, (m,) = tf(image, [label], seed=s)
        assert (m == 1).any()
