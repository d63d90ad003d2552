"""MixVPR (Ali-bey et al., WACV 2023): ResNet50 cut after layer3, feature-mixer MLPs; weights supplied.

Release files (github.com/amaralibey/MixVPR, Google Drive links in its README):
``resnet50_MixVPR_{dim}_channels({out_channels})_rows({out_rows}).ckpt`` for 4096 (1024 x 4), 512 (256 x 2) and
128 (64 x 2) dimensions. Despite the ``.ckpt`` suffix the README loads them with
``model.load_state_dict(torch.load(path))``: a bare state dict of the authors' ``VPRModel`` with
``backbone.model.<torchvision resnet50 key>`` (conv1, bn1, layer1..layer3; avgpool, fc and layer4 are removed)
and ``aggregator.mix.<i>.mix.{0,1,3}``, ``aggregator.channel_proj``, ``aggregator.row_proj``. A Lightning
training checkpoint of the same model (the state dict under ``state_dict``) loads too. Input: 320 x 320, ImageNet
normalisation (the README's ``demo.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import ResNet
from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights


class FeatureMixer(nn.Module):
    """Residual MLP over the flattened spatial dimension of each channel."""

    def __init__(self, in_dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        hidden = int(in_dim * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPRAggregator(nn.Module):
    """(B, C, H, W) -> (B, out_channels * out_rows), L2-normalised."""

    def __init__(self, in_channels: int = 1024, in_h: int = 20, in_w: int = 20, out_channels: int = 1024,
                 mix_depth: int = 4, mlp_ratio: float = 1.0, out_rows: int = 4):
        super().__init__()
        hw = in_h * in_w
        self.mix = nn.Sequential(*[FeatureMixer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(x.flatten(2))  # (B, C, HW)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # (B, out_channels, HW)
        x = self.row_proj(x)  # (B, out_channels, out_rows)
        return F.normalize(x.flatten(1), dim=1)


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = ResNet(50, num_layers=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MixVPRNet(nn.Module):
    """(B, 3, 320, 320) RGB in [0, 1] -> (B, 4096) with the released configuration."""

    def __init__(self, out_channels: int = 1024, out_rows: int = 4, mix_depth: int = 4, image_size: int = 320):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = _Backbone()
        side = image_size // 16  # layer3 has stride 16
        self.aggregator = MixVPRAggregator(1024, side, side, out_channels, mix_depth, 1.0, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(self.normalize(x)))


class MixVPR(TorchGlobalExtractor):
    """MixVPR global descriptors; images are resized to a fixed square as in training.

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt``.
        out_channels: channel projection size of the checkpoint.
        out_rows: row projection size; the descriptor has out_channels x out_rows dimensions.
        image_size: the square input side in pixels (320 for the released model).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "mixvpr"

    def __init__(self, weights: str | None = None, out_channels: int = 1024, out_rows: int = 4, image_size: int = 320,
                 batch_size: int = 8, device: str | None = None):
        super().__init__(0, batch_size, device)
        self.weights = weights
        self.out_channels = out_channels
        self.out_rows = out_rows
        self.fixed_size = (image_size, image_size)
        self._weights_path = resolve_weights(weights, f"resnet50_MixVPR_{out_channels * out_rows}_channels({out_channels})_rows({out_rows}).ckpt",
                                             "MixVPR", "github.com/amaralibey/MixVPR")

    @property
    def dim(self) -> int:
        return self.out_channels * self.out_rows

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "out_channels": self.out_channels, "out_rows": self.out_rows}

    def _build(self) -> torch.nn.Module:
        net = MixVPRNet(self.out_channels, self.out_rows, image_size=self.fixed_size[0])  # type: ignore[index]
        load_into(net, load_state_dict(self._weights_path, "MixVPR"), self._weights_path, "MixVPR")
        return net
