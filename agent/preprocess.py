"""Camera frame -> network input: the ONE preprocessing path, shared by training and driving.

The CARIL reference (``Code/data_loader.py``) crops the bottom 230 rows of a 448x448 RGB frame (box
left, top, right, bottom = 0, 218, 448, 448), resizes the crop to 160x160 and divides by 255; it applies no
mean/std normalisation, although its ImageNet ResNet-50 expects one (reference pitfall 9), so the
normalisation is configurable here and ``none`` is the paper's choice.

Three entry points compute the same numbers:

* :func:`preprocess_frame`: one HxWx3 uint8 RGB frame -> (3, h, w) float32 numpy (the driving agent);
* :func:`crop_and_resize` + :func:`to_tensor_normalised`: the same in two steps, so DataLoader workers can
  resize on decode (uint8, small) and the training step normalises (what the dataset stores is uint8);
* :func:`preprocess_batch`: a (B, H, W, 3) uint8 tensor on any device -> (B, 3, h, w) float32, the resize
  done as two matrix products that reproduce ``cv2.INTER_AREA`` (within one grey level, 1/255).

The crop is stored as fractions of the frame so other camera sizes work; at 448x448 the paper's pixel rows
are exact (row 218 is the first row kept).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch

from sim.errors import CarilError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, RGB, for images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = ("none", "imagenet", "custom")


class FrameError(CarilError, ValueError):
    """A camera frame that is not an HxWx3 uint8 RGB array (or is too small for the configured crop)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a camera frame becomes network input. The defaults are the CARIL paper's.

    Crop bounds are fractions of the frame height (``crop_top``, ``crop_bottom``) and width (``crop_left``,
    ``crop_right``); a bound maps to pixel ``round(fraction * size)``, the crop keeping rows
    ``[top, bottom)``. The crop is resized to ``height`` x ``width`` pixels with area interpolation, scaled
    to [0, 1], then normalised: ``none`` (the paper), ``imagenet`` (torchvision's mean/std, for pretrained
    backbones) or ``custom`` (``mean`` and ``std`` given, per RGB channel, in [0, 1] units).
    """

    crop_top: float = 218 / 448  # the paper keeps rows 218..447 of a 448-row frame
    crop_bottom: float = 1.0
    crop_left: float = 0.0
    crop_right: float = 1.0
    height: int = 160  # output pixels
    width: int = 160
    normalisation: str = "none"  # none | imagenet | custom
    mean: tuple[float, float, float] | None = None  # only with normalisation="custom"
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.crop_top < self.crop_bottom <= 1.0:
            raise UsageError(f"crop rows top={self.crop_top} bottom={self.crop_bottom} must satisfy "
                             "0 <= crop_top < crop_bottom <= 1 (fractions of the frame height)")
        if not 0.0 <= self.crop_left < self.crop_right <= 1.0:
            raise UsageError(f"crop columns left={self.crop_left} right={self.crop_right} must satisfy "
                             "0 <= crop_left < crop_right <= 1 (fractions of the frame width)")
        if not (4 <= self.height <= 2048 and 4 <= self.width <= 2048):
            raise UsageError(f"output size {self.height}x{self.width} is outside 4..2048 pixels per side")
        if self.normalisation not in NORMALISATIONS:
            raise UsageError(f"normalisation {self.normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        if self.normalisation == "custom":
            for name in ("mean", "std"):
                value = getattr(self, name)
                if value is None or len(value) != 3:
                    raise UsageError(f"normalisation 'custom' needs {name} as 3 numbers (R, G, B), got {value!r}")
                object.__setattr__(self, name, tuple(float(v) for v in value))
            if min(self.std) <= 0.0:
                raise UsageError(f"std {self.std} must be positive in every channel")
        elif self.mean is not None or self.std is not None:
            raise UsageError(f"mean/std are only used with normalisation='custom' (got {self.normalisation!r}); "
                             "remove them or set normalisation='custom'")

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of the network input in pixels."""
        return self.height, self.width

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The per-channel (mean, std) applied after scaling to [0, 1], or None for no normalisation."""
        if self.normalisation == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if self.normalisation == "custom":
            return self.mean, self.std  # type: ignore[return-value]
        return None

    def crop_box(self, frame_height: int, frame_width: int) -> tuple[int, int, int, int]:
        """Pixel crop ``(top, bottom, left, right)`` (bottom/right exclusive) for a frame of this size."""
        top, bottom = round(self.crop_top * frame_height), round(self.crop_bottom * frame_height)
        left, right = round(self.crop_left * frame_width), round(self.crop_right * frame_width)
        if bottom <= top or right <= left:
            raise FrameError(f"a {frame_height}x{frame_width} frame leaves an empty crop (rows {top}:{bottom}, "
                             f"columns {left}:{right}); use a larger camera image or wider crop fractions")
        return top, bottom, left, right

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown preprocess setting(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        for name in ("mean", "std"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def check_frame(image: Any) -> None:
    """Raise :class:`FrameError` unless ``image`` is an HxWx3 uint8 RGB array."""
    if not isinstance(image, np.ndarray):
        raise FrameError(f"camera frame must be a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FrameError(f"camera frame must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}"
                         " (CARLA gives BGRA: the backend converts it to RGB)")


def crop_and_resize(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Crop and resize one HxWx3 uint8 RGB frame -> (height, width, 3) uint8, with ``cv2.INTER_AREA``."""
    check_frame(image)
    top, bottom, left, right = cfg.crop_box(image.shape[0], image.shape[1])
    crop = image[top:bottom, left:right]  # (hc, wc, 3) view
    if crop.shape[:2] == (cfg.height, cfg.width):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)  # (h, w, 3) uint8


def _normalise_numpy(chw_uint8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    x = chw_uint8.astype(np.float32) / np.float32(255.0)  # (..., 3, h, w) in [0, 1]
    stats = cfg.mean_std()
    if stats is not None:
        mean = np.asarray(stats[0], dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(stats[1], dtype=np.float32).reshape(3, 1, 1)
        x = (x - mean) / std
    return x


def preprocess_frame(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """One HxWx3 uint8 RGB camera frame -> (3, height, width) float32 network input (C-contiguous)."""
    small = crop_and_resize(image, cfg)  # (h, w, 3) uint8
    chw = np.ascontiguousarray(small.transpose(2, 0, 1))  # (3, h, w) uint8
    return _normalise_numpy(chw, cfg)


def _normalise_torch(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(..., 3, h, w) float32 in 0..255 -> scaled and normalised, with the same float32 ops as numpy."""
    x = x / 255.0  # (..., 3, h, w) in [0, 1]
    stats = cfg.mean_std()
    if stats is not None:
        mean, std = _mean_std_tensors(stats, x.device)
        x = (x - mean) / std
    return x


@lru_cache(maxsize=16)
def _mean_std_tensors(stats: tuple[tuple[float, ...], tuple[float, ...]],
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) mean and std on ``device``, made once: no host-to-device copy per call (a CUDA graph
    capture forbids one)."""
    return (torch.tensor(stats[0], dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(stats[1], dtype=torch.float32, device=device).view(3, 1, 1))


def to_tensor_normalised(images: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Already cropped and resized uint8 image(s) -> float32 network input.

    ``(h, w, 3)`` -> ``(3, h, w)`` and ``(B, h, w, 3)`` -> ``(B, 3, h, w)``; ``h, w`` must be the configured
    output size. The tensor stays on the input's device (a numpy array gives a CPU tensor).
    """
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images  # flips ok
    if t.dtype != torch.uint8 or t.ndim not in (3, 4) or tuple(t.shape[-3:]) != (cfg.height, cfg.width, 3):
        raise FrameError(f"expected uint8 image(s) of shape (h, w, 3) or (B, h, w, 3) with h, w = "
                         f"{cfg.height}, {cfg.width} (run crop_and_resize first), got shape {tuple(t.shape)} "
                         f"dtype {t.dtype}")
    x = t.movedim(-1, -3).to(torch.float32)  # (..., 3, h, w)
    return _normalise_torch(x, cfg).contiguous()


def _resize_weights(n_in: int, n_out: int, area: bool) -> np.ndarray:
    """(n_out, n_in) 1-D resampling weights that reproduce ``cv2.resize(..., INTER_AREA)`` along one axis.

    OpenCV does true area averaging only when both axes shrink (``area``); otherwise it uses a bilinear
    variant with its own coefficient (``imgproc/src/resize.cpp``), reproduced here.
    """
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        if area:  # the output pixel covers source interval [i * scale, (i + 1) * scale)
            start, stop = i * scale, (i + 1) * scale
            for k in range(math.floor(start), min(math.ceil(stop), n_in)):
                weights[i, k] = (min(stop, k + 1) - max(start, k)) / scale
        else:
            sx = math.floor(i * scale)
            fx = (i + 1) - (sx + 1) / scale
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
            weights[i, min(sx, n_in - 1)] += 1.0 - fx
            weights[i, min(sx + 1, n_in - 1)] += fx
    return weights


@lru_cache(maxsize=16)
def _resize_matrices(h_in: int, w_in: int, h_out: int, w_out: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column resampling matrices on ``device``, made once per size and device."""
    area = h_in >= h_out and w_in >= w_out
    rows = torch.from_numpy(_resize_weights(h_in, h_out, area)).float()  # (h_out, h_in)
    cols = torch.from_numpy(_resize_weights(w_in, w_out, area)).float().T.contiguous()  # (w_in, w_out)
    return rows.to(device), cols.to(device)


def preprocess_batch(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """A batch of frames (B, H, W, 3) uint8 RGB on any device -> (B, 3, height, width) float32 network input.

    Same numbers as :func:`preprocess_frame` to within 1/255 (before normalisation): the resize is rounded to
    whole grey levels as OpenCV does. For GPU training on raw frames; the matrices are cached per size.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise FrameError(f"frames must be a (B, H, W, 3) uint8 RGB tensor, got {shape} "
                         f"dtype {getattr(images, 'dtype', None)}")
    top, bottom, left, right = cfg.crop_box(images.shape[1], images.shape[2])
    x = images[:, top:bottom, left:right, :].permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, hc, wc)
    if (bottom - top, right - left) != (cfg.height, cfg.width):
        rows, cols = _resize_matrices(bottom - top, right - left, cfg.height, cfg.width, x.device)
        x = rows @ x  # (B, 3, h, wc)
        x = x @ cols  # (B, 3, h, w)
        x = x.round_().clamp_(0.0, 255.0)  # whole grey levels, as the uint8 path
    return _normalise_torch(x, cfg).contiguous()
