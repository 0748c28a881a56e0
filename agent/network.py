"""The dual-head steering network: a CNN backbone, a shared trunk, a regression head and a classification head.

Structure, as the CARIL reference (``Code/model.py``, Keras)::

    image (B, 3, H, W) -> backbone -> global average pool -> [Linear 256, ReLU, Dropout 0.3]
                       -> [Linear 128, ReLU, Dropout 0.3] -> shared (B, 128)
    shared -> Linear 64, ReLU, Dropout 0.3 -> Linear 1        -> steer  (B,)       regression, linear
    shared -> Linear 64, ReLU, Dropout 0.3 -> Linear n_bins   -> logits (B, n_bins) classification

The regression output is linear (no activation), as the reference's ``Dense(1)``: targets are steering in
scaled units clipped to [-1, 1], and the agent clips the command; ``regression_activation="tanh"`` bounds it
instead. The classification head returns logits (the reference applies softmax inside the model and a
cross-entropy on probabilities; logits + ``F.cross_entropy`` is the same loss, computed stably). Linear
layers start as Keras ``Dense`` does (Glorot-uniform weights, zero biases). The reference also puts an L2
penalty of 0.01 on the four hidden Dense kernels, which dominates its reported loss (reference pitfall 10);
here that belongs to the optimizer's weight decay, not to :class:`LossConfig`.

Pretrained ImageNet weights are never downloaded: ``pretrained=True`` reads ``weights_path`` or torchvision's
own cache file (see :func:`default_weights_path`) and raises :class:`PretrainedWeightsError` saying which file
to copy where when it is absent.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from sim.errors import CarilError, UsageError, unknown_name
from sim.types import RoadOption

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
POOLS = ("avg", "max", "flatten")
REGRESSION_ACTIVATIONS = ("none", "tanh")
PRESETS = ("paper", "fast")

# Keras' ResNet50 ``base_model.layers[:120]`` (frozen in the reference) in torchvision's names: the stem,
# conv2_x, conv3_x, conv4 blocks 1-3 and conv4_block4 up to its third conv (its ``_3_bn`` is layer 120).
PAPER_FROZEN_RESNET50 = (
    "conv1.", "bn1.", "layer1.", "layer2.", "layer3.0.", "layer3.1.", "layer3.2.",
    "layer3.3.conv1.", "layer3.3.bn1.", "layer3.3.conv2.", "layer3.3.bn2.", "layer3.3.conv3.",
)

# small_cnn: (out_channels, kernel, stride) per Conv-BN-ReLU block; 160x160 -> 10x10x192 feature map.
SMALL_CNN_LAYERS = ((32, 5, 2), (48, 3, 2), (64, 3, 2), (128, 3, 2), (192, 3, 1))


class PretrainedWeightsError(CarilError, FileNotFoundError):
    """Pretrained backbone weights are absent or unreadable; the message names the file and how to provide it."""


def _tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that determines the network's structure; stored in checkpoints to rebuild it.

    ``backbone`` is one of :data:`BACKBONES`; ``small_cnn`` (the default) is a ~0.4 M-parameter CNN for CPU
    work, the others are torchvision models with their classifier removed. ``input_size`` is (height, width)
    in pixels and must match the preprocessing output. ``trunk`` lists the shared hidden layer widths,
    ``head_hidden`` the hidden width of each head (0: no hidden layer). ``frozen_backbone_prefixes`` freezes
    backbone parameters whose torchvision name starts with one of them (frozen BatchNorm layers also keep
    their running statistics, as Keras' non-trainable layers do). ``command_branches`` gives the network one
    regression head and one classification head per route command (:class:`~sim.types.RoadOption`), as
    conditional imitation learning (Codevilla et al. 2018, CILRS) does: the command picks the branch, so
    the network can take the turn the route asks for at a junction that looks the same either way. Off
    (the paper's camera-only network), there is one pair of heads and no command input.
    """

    backbone: str = "small_cnn"
    pretrained: bool = False  # ImageNet weights from weights_path or torchvision's local cache; never downloaded
    weights_path: str | None = None  # a torchvision state_dict (.pth/.pt, or .safetensors) for the backbone
    input_size: tuple[int, int] = (160, 160)  # (height, width) pixels
    trunk: tuple[int, ...] = (256, 128)  # shared Linear-ReLU-Dropout widths
    head_hidden: int = 64  # Linear-ReLU-Dropout width in each head; 0 for none
    dropout: float = 0.3
    n_bins: int = 11  # steering classes of the classification head
    pool: str = "avg"  # avg | max | flatten (keeps the spatial layout; feature count depends on input_size)
    regression_activation: str = "none"  # none (the reference, linear) | tanh
    frozen_backbone_prefixes: tuple[str, ...] = ()
    command_branches: bool = False  # CIL-style: one pair of heads per route command (RoadOption), picked per sample

    def __post_init__(self) -> None:
        for name in ("input_size", "trunk", "frozen_backbone_prefixes"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if self.weights_path is not None:
            object.__setattr__(self, "weights_path", str(self.weights_path))
        if self.backbone not in BACKBONES:
            raise unknown_name("backbone", self.backbone, BACKBONES)
        if self.pretrained and self.backbone == "small_cnn":
            raise UsageError("small_cnn has no pretrained weights; set pretrained=False or pick a torchvision backbone")
        if self.weights_path is not None and not self.pretrained:
            raise UsageError(f"weights_path={self.weights_path!r} is set but pretrained=False; set pretrained=True")
        if len(self.input_size) != 2 or not all(isinstance(v, int) and 32 <= v <= 2048 for v in self.input_size):
            raise UsageError(f"input_size {self.input_size} must be (height, width), each 32..2048 pixels")
        if not all(isinstance(v, int) and v > 0 for v in self.trunk):
            raise UsageError(f"trunk {self.trunk} must list positive layer widths, e.g. (256, 128)")
        if self.head_hidden < 0:
            raise UsageError(f"head_hidden {self.head_hidden} must be >= 0 (0: no hidden layer)")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout {self.dropout} must be in [0, 1)")
        if self.n_bins < 2:
            raise UsageError(f"n_bins {self.n_bins} must be at least 2")
        if self.pool not in POOLS:
            raise UsageError(f"pool {self.pool!r} is not one of {', '.join(POOLS)}")
        if self.regression_activation not in REGRESSION_ACTIVATIONS:
            raise UsageError(f"regression_activation {self.regression_activation!r} is not one of "
                             f"{', '.join(REGRESSION_ACTIVATIONS)}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetworkConfig:
        """``paper``: the reference's ImageNet ResNet-50 dual head; ``fast``: the small CPU CNN (the default).

        Keyword overrides replace preset fields, e.g. ``preset("paper", pretrained=False)``.
        """
        if name == "paper":
            base = cls(backbone="resnet50", pretrained=True, input_size=(160, 160), trunk=(256, 128),
                       head_hidden=64, dropout=0.3, n_bins=11, pool="avg", regression_activation="none",
                       frozen_backbone_prefixes=PAPER_FROZEN_RESNET50)
        elif name == "fast":
            base = cls()
        else:
            raise unknown_name("network preset", name, PRESETS)
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown network setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class LossConfig:
    """loss = w_regression * (MSE or Huber on steer) + w_classification * cross-entropy on bins (paper 0.5/0.5)."""

    regression: str = "mse"  # mse | huber
    huber_delta: float = 1.0  # scaled steering units; only for huber
    w_regression: float = 0.5
    w_classification: float = 0.5
    label_smoothing: float = 0.0  # of the cross-entropy; the reference uses none

    def __post_init__(self) -> None:
        if self.regression not in ("mse", "huber"):
            raise UsageError(f"regression loss {self.regression!r} is not one of mse, huber")
        if self.huber_delta <= 0:
            raise UsageError(f"huber_delta {self.huber_delta} must be positive")
        if self.w_regression < 0 or self.w_classification < 0 or self.w_regression + self.w_classification == 0:
            raise UsageError(f"loss weights {self.w_regression}, {self.w_classification} must be >= 0, not both 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"label_smoothing {self.label_smoothing} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown loss setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# --- pretrained weights: local files only ----------------------------------------------------------------


def pretrained_weights_file(backbone: str) -> str:
    """File name torchvision caches the default ImageNet weights under, e.g. ``resnet50-11ad3fa6.pth``."""
    import torchvision

    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    return os.path.basename(urlparse(url).path)


def default_weights_path(backbone: str) -> Path:
    """Where torchvision would cache them: ``torch.hub.get_dir()/checkpoints/<file>`` (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / pretrained_weights_file(backbone)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only, no code
    except Exception as e:
        raise PretrainedWeightsError(f"cannot read backbone weights {path}: {e}") from e
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def _pretrained_state_dict(cfg: NetworkConfig) -> tuple[dict[str, torch.Tensor], Path]:
    if cfg.weights_path is not None:
        path = Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"backbone weights file {path} does not exist; check --weights PATH")
        return _read_state_dict(path), path
    path = default_weights_path(cfg.backbone)
    if not path.is_file():
        import torchvision

        url = torchvision.models.get_model_weights(cfg.backbone).DEFAULT.url
        raise PretrainedWeightsError(
            f"pretrained {cfg.backbone} weights not found at {path}; nothing is downloaded: copy {path.name} "
            f"(published at {url}) into {path.parent}/ or pass --weights PATH, or train from random weights with "
            "--no-pretrained")
    return _read_state_dict(path), path


# --- backbones --------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, 'same'-style padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)


class SmallCNN(nn.Sequential):
    """Five strided Conv-BN-ReLU blocks (:data:`SMALL_CNN_LAYERS`): 160x160 -> (192, 10, 10), ~0.34 M params."""

    def __init__(self) -> None:
        super().__init__()
        c_in = 3
        for i, (c_out, kernel, stride) in enumerate(SMALL_CNN_LAYERS):
            self.add_module(str(i), ConvBNReLU(c_in, c_out, kernel, stride))
            c_in = c_out
        self.out_channels = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``; parameter names stay torchvision's."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))
        self.out_channels = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (B, C2, H/8, W/8)
        return self.layer4(self.layer3(x))  # (B, C, H/32, W/32)


class FeaturesOnly(nn.Module):
    """The ``features`` part of a torchvision MobileNet/EfficientNet (names ``features.*`` kept)."""

    def __init__(self, model: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.features = model.features
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/32, W/32)


def _load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, backbone: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if v]
    if problems:
        raise PretrainedWeightsError(f"{path} does not hold torchvision {backbone} weights: {'; '.join(problems)} "
                                     "tensor names; give the file of this backbone's default ImageNet weights")
    model.load_state_dict(state)


def build_backbone(cfg: NetworkConfig, load_pretrained: bool = True) -> nn.Module:
    """The feature extractor named by ``cfg.backbone`` with an ``out_channels`` attribute.

    Pretrained weights (``cfg.pretrained`` and ``load_pretrained``) are located before the model is built,
    so a missing file fails fast, and loaded strictly into the full torchvision model.
    """
    if cfg.backbone == "small_cnn":
        return SmallCNN()
    import torchvision

    state = path = None
    if cfg.pretrained and load_pretrained:
        state, path = _pretrained_state_dict(cfg)
    model = torchvision.models.get_model(cfg.backbone, weights=None)
    if state is not None:
        _load_backbone_state(model, state, path, cfg.backbone)
    if cfg.backbone.startswith("resnet"):
        return ResNetFeatures(model)
    last = next(m for m in model.classifier.modules() if isinstance(m, nn.Linear))
    return FeaturesOnly(model, last.in_features)


# --- the network ------------------------------------------------------------------------------------------


def _hidden(n_in: int, n_out: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]


class DualHeadNet(nn.Module):
    """Steering by regression (``steer``) and by classification over bins (``logits``), one shared trunk.

    Input: (B, 3, H, W) float images from :mod:`agent.preprocess`, ``(H, W) == config.input_size``; any
    memory format (pass ``channels_last`` tensors to a ``channels_last`` model) and autocast dtype.
    """

    def __init__(self, config: NetworkConfig, loss: LossConfig | None = None, *, load_pretrained: bool = True):
        super().__init__()
        self.config = config
        self.loss_config = loss or LossConfig()
        self.backbone = build_backbone(config, load_pretrained)
        self.pool = nn.Flatten(1) if config.pool == "flatten" else nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if config.pool == "avg" else nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        n_features = self._feature_count()
        widths = (n_features, *config.trunk)
        self.trunk = nn.Sequential(*[m for a, b in pairwise(widths) for m in _hidden(a, b, config.dropout)])
        n_branches = len(RoadOption) if config.command_branches else 1
        self.regression_head = self._branches(widths[-1], 1, n_branches)
        self.classification_head = self._branches(widths[-1], config.n_bins, n_branches)
        for m in [*self.trunk.modules(), *self.regression_head.modules(), *self.classification_head.modules()]:
            if isinstance(m, nn.Linear):  # as Keras Dense: Glorot-uniform kernel, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self._frozen_norms = self._freeze(config.frozen_backbone_prefixes)

    def _head(self, n_in: int, n_out: int) -> nn.Sequential:
        hidden = self.config.head_hidden
        if hidden == 0:
            return nn.Sequential(nn.Linear(n_in, n_out))
        return nn.Sequential(*_hidden(n_in, hidden, self.config.dropout), nn.Linear(hidden, n_out))

    def _branches(self, n_in: int, n_out: int, n_branches: int) -> nn.Module:
        """One head, or a ``ModuleList`` of one head per command when the network is command-branched."""
        if n_branches == 1:
            return self._head(n_in, n_out)
        return nn.ModuleList(self._head(n_in, n_out) for _ in range(n_branches))

    def _apply_head(self, head: nn.Module, shared: torch.Tensor, command: torch.Tensor | None) -> torch.Tensor:
        """The head's output (B, n_out); for a branched network, each sample's command branch."""
        if not isinstance(head, nn.ModuleList):
            return head(shared)
        if command is None:
            raise ValueError("this network is command-branched: pass command=(B,) RoadOption values")
        every = torch.stack([branch(shared) for branch in head], 1)  # (B, n_branches, n_out)
        index = (command.to(shared.device).long() - int(min(RoadOption))).clamp(0, len(head) - 1)  # (B,)
        return every[torch.arange(len(index), device=shared.device), index]  # (B, n_out)

    def _feature_count(self) -> int:
        if self.config.pool != "flatten":
            return self.backbone.out_channels
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            n = self.pool(self.backbone(torch.zeros(1, 3, *self.config.input_size))).shape[1]
        self.backbone.train(was_training)
        return int(n)

    def _freeze(self, prefixes: tuple[str, ...]) -> list[nn.Module]:
        """Stop gradients to matching backbone parameters; return the BatchNorm layers frozen entirely."""
        if not prefixes:
            return []
        names = [n for n, _ in self.backbone.named_parameters()]
        for prefix in prefixes:
            if not any(n.startswith(prefix) for n in names):
                raise UsageError(f"frozen prefix {prefix!r} matches no {self.config.backbone} parameter "
                                 f"(names look like {names[0]!r}, {names[-1]!r})")
        for name, param in self.backbone.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad_(False)
        return [m for n, m in self.backbone.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and (n + ".").startswith(prefixes)]

    def train(self, mode: bool = True) -> DualHeadNet:
        """As ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode (fixed statistics)."""
        super().train(mode)
        for m in self._frozen_norms:
            m.eval()
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (all, or only those that receive gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def forward(self, images: torch.Tensor, targets: dict[str, torch.Tensor] | None = None,
                command: torch.Tensor | None = None) -> dict[str, Any]:
        """``{"steer": (B,), "logits": (B, n_bins)}``; with ``targets`` ``{"steer": (B,), "bin": (B,) long}``
        also ``"loss"`` (scalar tensor) and ``"loss_dict"`` (floats; reading them syncs with the device).
        ``command`` (B,) holds RoadOption values; a command-branched network needs it, others ignore it."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.config.input_size:
            raise ValueError(f"images must be (B, 3, {self.config.input_size[0]}, {self.config.input_size[1]}) "
                             f"as the preprocessing makes them, got {tuple(images.shape)}")
        features = self.pool(self.backbone(images))  # (B, F)
        shared = self.trunk(features)  # (B, trunk[-1])
        steer = self._apply_head(self.regression_head, shared, command).squeeze(-1)  # (B,)
        if self.config.regression_activation == "tanh":
            steer = torch.tanh(steer)  # (B,) in (-1, 1)
        logits = self._apply_head(self.classification_head, shared, command)  # (B, n_bins)
        out: dict[str, Any] = {"steer": steer, "logits": logits}
        if targets is not None:
            loss, parts = self.compute_loss(steer, logits, targets)
            out["loss"] = loss
            out["loss_dict"] = {k: float(v) for k, v in parts.items()}
        return out

    def compute_loss(self, steer: torch.Tensor, logits: torch.Tensor,
                     targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted regression + classification loss, in float32 whatever the autocast dtype."""
        cfg = self.loss_config
        target_steer = targets["steer"].to(torch.float32)  # (B,)
        if cfg.regression == "mse":
            loss_reg = F.mse_loss(steer.float(), target_steer)  # ()
        else:
            loss_reg = F.huber_loss(steer.float(), target_steer, delta=cfg.huber_delta)  # ()
        loss_cls = F.cross_entropy(logits.float(), targets["bin"].long(),
                                   label_smoothing=cfg.label_smoothing)  # ()
        loss = cfg.w_regression * loss_reg + cfg.w_classification * loss_cls  # ()
        return loss, {"loss_regression": loss_reg.detach(), "loss_classification": loss_cls.detach(),
                      "loss": loss.detach()}
