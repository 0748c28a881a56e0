"""Preprocessing: the paper's exact crop, the numpy and torch paths agreeing, and clear errors for bad frames."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from agent.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameError,
    PreprocessConfig,
    crop_and_resize,
    preprocess_batch,
    preprocess_frame,
    to_tensor_normalised,
)
from sim.errors import CarilError, UsageError

PAPER = PreprocessConfig()


def random_frame(height=448, width=448, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_frame(height=448, width=448):
    y, x = np.mgrid[0:height, 0:width]
    r = 127.5 + 127.5 * np.sin(x / 17.0) * np.cos(y / 23.0)
    return np.stack([r, 255.0 * y / height, 255.0 * x / width], axis=-1).round().astype(np.uint8)


def test_paper_crop_keeps_rows_218_to_447_of_a_448_frame():
    assert PAPER.crop_box(448, 448) == (218, 448, 0, 448)
    assert PAPER.output_size == (160, 160)
    frame = random_frame()
    no_resize = replace(PAPER, height=230, width=448)
    np.testing.assert_array_equal(crop_and_resize(frame, no_resize), frame[218:])


def test_row_218_is_the_first_row_that_reaches_the_output():
    above = np.zeros((448, 448, 3), np.uint8)
    above[:218] = 255  # everything above the crop is white: nothing of it may show
    assert crop_and_resize(above, PAPER).max() == 0
    first = np.zeros((448, 448, 3), np.uint8)
    first[218] = 255  # the first kept row lands in the first output row only
    out = crop_and_resize(first, PAPER)
    assert out[0].min() > 0 and out[1:].max() == 0


def test_crop_fractions_scale_to_other_camera_sizes():
    assert PAPER.crop_box(224, 224) == (109, 224, 0, 224)
    assert PAPER.crop_box(600, 800) == (292, 600, 0, 800)  # round(218 / 448 * 600) = 292


def test_preprocess_frame_scales_to_unit_range_chw_float32():
    out = preprocess_frame(np.full((448, 448, 3), 255, np.uint8), PAPER)
    assert out.shape == (3, 160, 160) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(out == 1.0)
    frame = smooth_frame()
    np.testing.assert_array_equal(preprocess_frame(frame, PAPER),
                                  crop_and_resize(frame, PAPER).transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_imagenet_normalisation_uses_torchvision_statistics():
    cfg = replace(PAPER, normalisation="imagenet")
    out = preprocess_frame(np.full((448, 448, 3), 255, np.uint8), cfg)
    for c in range(3):
        expected = (np.float32(1.0) - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert np.all(out[c] == expected)


def test_custom_normalisation_and_channel_order_rgb():
    cfg = replace(PAPER, normalisation="custom", mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 0.25))
    frame = np.zeros((448, 448, 3), np.uint8)
    frame[..., 0] = 255  # red only
    out = preprocess_frame(frame, cfg)
    assert np.all(out[0] == 1.0) and np.all(out[1] == 0.0) and np.all(out[2] == 0.0)


def test_two_step_path_gives_bit_identical_input():
    for norm in ("none", "imagenet"):
        cfg = replace(PAPER, normalisation=norm)
        frames = [random_frame(seed=1), smooth_frame()]
        small = np.stack([crop_and_resize(f, cfg) for f in frames])  # (2, 160, 160, 3) as a DataLoader stores it
        batch = to_tensor_normalised(small, cfg)
        assert batch.shape == (2, 3, 160, 160) and batch.dtype == torch.float32
        for i, f in enumerate(frames):
            expected = torch.from_numpy(preprocess_frame(f, cfg))
            assert torch.equal(batch[i], expected)
            assert torch.equal(to_tensor_normalised(small[i], cfg), expected)
    flipped = small[0, :, ::-1]  # a horizontal flip (negative strides), as augmentation makes
    assert torch.equal(to_tensor_normalised(flipped, cfg), to_tensor_normalised(small[0], cfg).flip(-1))


@pytest.mark.parametrize("size", [(448, 448), (600, 800), (224, 224), (448, 200), (160, 160)])
@pytest.mark.parametrize("normalisation", ["none", "imagenet"])
def test_torch_batch_path_matches_opencv_within_one_grey_level(size, normalisation):
    cfg = replace(PAPER, normalisation=normalisation)
    frames = [random_frame(*size, seed=2), smooth_frame(*size)]
    batch = preprocess_batch(torch.from_numpy(np.stack(frames)), cfg)
    assert batch.shape == (2, 3, 160, 160) and batch.dtype == torch.float32
    level = (1.0 / 255.0) / (min(IMAGENET_STD) if normalisation == "imagenet" else 1.0)
    for i, f in enumerate(frames):
        diff = np.abs(batch[i].numpy() - preprocess_frame(f, cfg))
        assert diff.max() <= level + 1e-6
        # Off by one level only where OpenCV rounds differently: rarely for area averaging (both sides shrink),
        # more often where OpenCV upsamples with 11-bit fixed-point bilinear weights (224- and 160-pixel frames).
        shrinks = size[0] * (1 - PAPER.crop_top) >= 160 and size[1] >= 160
        assert np.mean(diff > 1e-6) < (0.01 if shrinks else 0.1)


@pytest.mark.parametrize("bad", [np.zeros((448, 448), np.uint8), np.zeros((448, 448, 4), np.uint8),
                                 np.zeros((448, 448, 3), np.float32), np.zeros((3, 448, 448), np.uint8),
                                 [[0, 0, 0]]])
def test_a_frame_of_the_wrong_shape_or_dtype_raises_a_caril_error(bad):
    with pytest.raises(FrameError, match="camera frame must be"):
        preprocess_frame(bad, PAPER)
    assert issubclass(FrameError, CarilError)


def test_batch_and_tensor_paths_reject_bad_input():
    message = "frames must be a (B, H, W, 3) uint8 RGB tensor, got (448, 448, 3)"
    with pytest.raises(FrameError, match=re.escape(message)):
        preprocess_batch(torch.zeros(448, 448, 3, dtype=torch.uint8), PAPER)
    with pytest.raises(FrameError, match="run crop_and_resize first"):
        to_tensor_normalised(np.zeros((448, 448, 3), np.uint8), PAPER)


def test_a_frame_too_small_for_the_crop_raises():
    cfg = replace(PAPER, crop_top=0.9)
    with pytest.raises(FrameError, match="leaves an empty crop"):
        preprocess_frame(np.zeros((4, 4, 3), np.uint8), cfg)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"crop_top": 0.5, "crop_bottom": 0.5}, "0 <= crop_top < crop_bottom <= 1"),
    ({"crop_left": -0.1}, "0 <= crop_left < crop_right <= 1"),
    ({"height": 2}, "outside 4..2048"),
    ({"normalisation": "caffe"}, "not one of none, imagenet, custom"),
    ({"normalisation": "custom"}, "needs mean as 3 numbers"),
    ({"normalisation": "custom", "mean": (0, 0, 0), "std": (1, 0, 1)}, "must be positive"),
    ({"mean": (0.5, 0.5, 0.5)}, "only used with normalisation='custom'"),
])
def test_invalid_config_says_how_to_fix_it(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        PreprocessConfig(**kwargs)


def test_config_round_trips_through_json():
    cfg = PreprocessConfig(normalisation="custom", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), height=96, width=128)
    back = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.crop_top == 218 / 448
    with pytest.raises(UsageError, match=r"unknown preprocess setting\(s\) \['resize'\]"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "resize": 1})
