"""NetVLAD (Arandjelović et al., CVPR 2016): VGG16 conv5_3 features, soft-assigned VLAD; weights supplied.

State-dict names follow the PyTorch re-implementation most checkpoints come from (Nanne/pytorch-NetVlad):
``encoder.<i>.weight`` for VGG16 ``features[:29]`` (conv5_3 without its ReLU) and ``pool.conv.weight``,
``pool.centroids`` for the NetVLAD layer; its ``.pth.tar`` files wrap them under ``state_dict``.
⚠ Not checked against a real file here (none can be downloaded). hloc's MATLAB-converted Pitts30k model
(with PCA whitening) is a different format and does not load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import vgg16_features
from fuseloc.data.extractors.base import (
    ImageNetNormalize,
    TorchGlobalExtractor,
    load_into,
    load_state_dict,
    resolve_weights,
)


class NetVLADLayer(nn.Module):
    """Soft-assignment VLAD over (B, D, H, W) features -> (B, K*D), intra- and L2-normalised.

    Args:
        num_clusters: K.
        dim: D.
    """

    def __init__(self, num_clusters: int = 64, dim: int = 512):
        super().__init__()
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d = x.shape[:2]
        x = F.normalize(x, dim=1)
        assign = self.conv(x).flatten(2).softmax(1)  # (B, K, HW)
        flat = x.flatten(2)  # (B, D, HW)
        # sum_i a_ik (x_i - c_k) = sum_i a_ik x_i - c_k sum_i a_ik
        vlad = assign @ flat.transpose(1, 2) - self.centroids[None] * assign.sum(2, keepdim=True)
        vlad = F.normalize(vlad, dim=2).reshape(b, -1)
        return F.normalize(vlad, dim=1)


class NetVLADNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, K*512) descriptors."""

    def __init__(self, num_clusters: int = 64):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.encoder = nn.Sequential(*list(vgg16_features().children())[:-2])
        self.pool = NetVLADLayer(num_clusters, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(self.normalize(x)))


class NetVLAD(TorchGlobalExtractor):
    """NetVLAD global descriptors (K x 512 dimensions, 32768 for the usual K = 64).

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/netvlad_vgg16_pitts30k.pth.tar``.
        num_clusters: K of the checkpoint.
        resize_max: longest image side in pixels (0 = keep).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "netvlad"

    def __init__(self, weights: str | None = None, num_clusters: int = 64, resize_max: int = 640, batch_size: int = 4,
                 device: str | None = None):
        super().__init__(resize_max, batch_size, device)
        self.weights = weights
        self.num_clusters = num_clusters
        self._weights_path = resolve_weights(weights, "netvlad_vgg16_pitts30k.pth.tar", "NetVLAD",
                                             "a pytorch-NetVlad (Nanne) VGG16 checkpoint")

    @property
    def dim(self) -> int:
        return self.num_clusters * 512

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "num_clusters": self.num_clusters}

    def _build(self) -> torch.nn.Module:
        net = NetVLADNet(self.num_clusters)
        load_into(net, load_state_dict(self._weights_path, "NetVLAD"), self._weights_path, "NetVLAD", strip=("module.",))
        return net
