"""MegaLoc (Berton & Masone, 2025): DINOv2 ViT-B/14 + a wider SALAD aggregator + a linear head; weights supplied.

Architecture of the release (``MegaLocModel`` in github.com/gmberton/MegaLoc): the DINOv2 ViT-B/14 of
:mod:`~fuseloc.data.extractors.dinov2`; the SALAD optimal-transport aggregator of
:mod:`~fuseloc.data.extractors.salad` with 64 clusters of 256-D features (twice SALAD's 128) and a 256-D class
token projection, hidden width 512, 3 Sinkhorn iterations: 64 x 256 + 256 = 16640 dimensions, L2-normalised;
then a linear layer to 8448 dimensions and a final L2 normalisation. The linear head sees the aggregator's
output in the release's order (class token first, then cluster features flattened feature-major).

Parameter names follow the released ``megaloc.torch`` (a bare state dict, loaded by the repository's
``hubconf.py`` from its v1.0 GitHub release): ``backbone.model.<DINOv2 hub keys>``,
``aggregator.agg.{token_features.{0,2},cluster_features.{0,3},score.{0,3},dust_bin}``,
``aggregator.linear.{weight,bias}``.

⚠ Not checked against the real file here (no network). ⚠ The input size: the release's model takes any
size, rounding each side to the nearest multiple of 14, and its input normalisation is left to the caller
(ImageNet statistics assumed, as in the authors' evaluation code for DINOv2 methods); the default 322 x 322
square follows SALAD's recommended setting and is not a documented MegaLoc choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import (
    ImageNetNormalize,
    TorchGlobalExtractor,
    load_into,
    load_state_dict,
    resolve_weights,
)
from fuseloc.data.extractors.dinov2 import HubBackbone
from fuseloc.data.extractors.salad import SaladAggregator

#: The released architecture; the extractor's tag names only the differences from it.
RELEASE = {"dim": 768, "depth": 12, "heads": 12, "num_clusters": 64, "cluster_dim": 256, "token_dim": 256,
           "out_dim": 8448}


class MegaLocHead(nn.Module):
    """SALAD aggregation (``agg``) followed by the release's linear projection (``linear``)."""

    def __init__(self, in_dim: int, num_clusters: int, cluster_dim: int, token_dim: int, out_dim: int):
        super().__init__()
        self.agg = SaladAggregator(in_dim, num_clusters, cluster_dim, token_dim)
        self.linear = nn.Linear(num_clusters * cluster_dim + token_dim, out_dim)

    def forward(self, token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.agg(token, tokens))


class MegaLocNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], sides multiples of 14 -> (B, out_dim) L2-normalised (release: 8448)."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, num_clusters: int = 64, cluster_dim: int = 256,
                 token_dim: int = 256, out_dim: int = 8448):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = HubBackbone(dim=dim, depth=depth, heads=heads)
        self.aggregator = MegaLocHead(dim, num_clusters, cluster_dim, token_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token, tokens = self.backbone.model(self.normalize(x))
        return F.normalize(self.aggregator(token, tokens), dim=-1)


class MegaLoc(TorchGlobalExtractor):
    """MegaLoc global descriptors; images are resized to a fixed square (a multiple of 14).

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/megaloc.torch``.
        image_size: the square input side in pixels; rounded down to a multiple of 14.
        dim, depth, heads: the ViT of the checkpoint (ViT-B/14: 768, 12, 12).
        num_clusters, cluster_dim, token_dim: the aggregator of the checkpoint (64, 256, 256).
        out_dim: the linear head's output, the descriptor's size (8448).
        batch_size: images per forward pass (descriptors do not depend on it).
        device: default CUDA when available.
    """

    name = "megaloc"

    def __init__(self, weights: str | None = None, image_size: int = 322, dim: int = 768, depth: int = 12,
                 heads: int = 12, num_clusters: int = 64, cluster_dim: int = 256, token_dim: int = 256,
                 out_dim: int = 8448, batch_size: int = 4, device: str | None = None):
        super().__init__(0, batch_size, device)
        self.weights = weights
        side = max(14, image_size // 14 * 14)
        self.fixed_size = (side, side)
        self.arch = {"dim": dim, "depth": depth, "heads": heads, "num_clusters": num_clusters,
                     "cluster_dim": cluster_dim, "token_dim": token_dim, "out_dim": out_dim}
        self._weights_path = resolve_weights(weights, "megaloc.torch", "MegaLoc", "github.com/gmberton/MegaLoc (release v1.0)")

    @property
    def dim(self) -> int:
        return self.arch["out_dim"]

    def _extra_config(self) -> dict:
        return {"weights": self.weights, **self.arch}

    def tag(self) -> str:
        a = self.arch
        arch = "" if a == RELEASE else (f"-vit{a['dim']}x{a['depth']}h{a['heads']}-k{a['num_clusters']}"
                                        f"c{a['cluster_dim']}t{a['token_dim']}o{a['out_dim']}")
        return f"megaloc{arch}-s{self.fixed_size[0]}"  # type: ignore[index]

    def _build(self) -> torch.nn.Module:
        net = MegaLocNet(**self.arch)
        load_into(net, load_state_dict(self._weights_path, "MegaLoc"), self._weights_path, "MegaLoc", strip=("module.",))
        return net
