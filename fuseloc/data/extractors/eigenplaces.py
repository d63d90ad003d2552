"""EigenPlaces (Berton et al., ICCV 2023): ResNet trunk, GeM pooling, a linear layer; weights supplied.

Release files (github.com/gmberton/EigenPlaces, release v1.0, fetched by its ``hubconf.py``): one per backbone
and descriptor size, named ``ResNet{depth}_{dim}_eigenplaces.pth`` (ResNet18: 256, 512; ResNet50 and ResNet101:
128, 256, 512, 1024, 2048; the VGG16 variant is not supported here). Each is a bare state dict of the authors'
``GeoLocalizationNet_`` (also CosPlace's layout): ``backbone.<i>`` for the torchvision ResNet children up to
layer4 (``backbone.0`` = conv1, ``backbone.4`` = layer1, ...), ``aggregation.1.p`` (GeM) and
``aggregation.3.{weight,bias}`` (the linear layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import ResNet
from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights


def release_file(depth: int, fc_output_dim: int) -> str:
    """The release's file name for a ResNet depth and descriptor size: ``ResNet50_2048_eigenplaces.pth``."""
    return f"ResNet{depth}_{fc_output_dim}_eigenplaces.pth"


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


class GeM(nn.Module):
    """Generalised-mean pooling with a learned exponent p: (B, C, H, W) -> (B, C, 1, 1)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.p)


class EigenPlacesNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, fc_output_dim), L2-normalised."""

    def __init__(self, depth: int = 50, fc_output_dim: int = 2048):
        super().__init__()
        self.normalize = ImageNetNormalize()
        trunk = ResNet(depth)
        self.backbone = nn.Sequential(*trunk.stages())
        self.aggregation = nn.Sequential(L2Norm(), GeM(), nn.Flatten(), nn.Linear(trunk.out_channels, fc_output_dim), L2Norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(self.normalize(x)))


class EigenPlaces(TorchGlobalExtractor):
    """EigenPlaces global descriptors.

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/ResNet<depth>_<dim>_eigenplaces.pth``
            (where the release's ``torch.hub`` loader stores it).
        depth: ResNet depth of the checkpoint (18, 50, 101, 152).
        fc_output_dim: descriptor dimension of the checkpoint.
        resize_max: longest image side in pixels (0 = keep).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "eigenplaces"

    def __init__(self, weights: str | None = None, depth: int = 50, fc_output_dim: int = 2048, resize_max: int = 512,
                 batch_size: int = 4, device: str | None = None):
        super().__init__(resize_max, batch_size, device)
        self.weights = weights
        self.depth = depth
        self.fc_output_dim = fc_output_dim
        self._weights_path = resolve_weights(weights, release_file(depth, fc_output_dim), "EigenPlaces",
                                             "github.com/gmberton/EigenPlaces (release v1.0)")

    @property
    def dim(self) -> int:
        return self.fc_output_dim

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "depth": self.depth, "fc_output_dim": self.fc_output_dim}

    def tag(self) -> str:
        return f"eigenplaces-resnet{self.depth}-d{self.fc_output_dim}-r{self.resize_max}"

    def _build(self) -> torch.nn.Module:
        net = EigenPlacesNet(self.depth, self.fc_output_dim)
        load_into(net, load_state_dict(self._weights_path, "EigenPlaces"), self._weights_path, "EigenPlaces")
        return net
