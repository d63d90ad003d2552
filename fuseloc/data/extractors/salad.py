"""SALAD (Izquierdo & Civera, CVPR 2024): DINOv2 ViT-B/14 tokens aggregated by optimal transport; weights supplied.

Backbone: DINOv2 ViT-B/14 in plain torch (patch 14, 12 blocks, 12 heads, LayerScale, final LayerNorm), its
position embeddings (trained at 518 px, 37 x 37 patches) bicubically resized for other inputs as DINOv2 does
(scale factor (n + 0.1) / 37). Aggregator: local tokens -> cluster features (128-D) and scores over 64
clusters; a Sinkhorn solver (3 log-domain iterations, with a learned dustbin row that absorbs the n - m
excess mass) turns scores into a soft assignment; the assigned features are summed per cluster,
intra-normalised, flattened feature-major (index d * 64 + k, as the release), concatenated after a 256-D
projection of the class token, and L2-normalised: 64 x 128 + 256 = 8448 dimensions. The ViT lives in
:mod:`~fuseloc.data.extractors.dinov2`, shared with MegaLoc and CricaVPR.

Weights: ``dino_salad.ckpt`` (github.com/serizba/salad, GitHub release v1.0.0, also a Google Drive link in its
README). Despite the ``.ckpt`` suffix the repository's ``hubconf.py`` and ``eval.py`` pass ``torch.load`` of it
straight to ``load_state_dict``: a bare state dict of the authors' Lightning ``VPRModel``, with
``backbone.model.<DINOv2 hub keys>`` (``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``,
``blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``) and
``aggregator.{token_features.{0,2},cluster_features.{0,3},score.{0,3},dust_bin}``. A Lightning training
checkpoint of the same model (``{'state_dict': ..., 'epoch', 'optimizer_states', ...}``) loads too. The
evaluation input size of 322 x 322 is the README's evaluation command (``--image_size 322 322``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.dinov2 import HubBackbone
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights


def sinkhorn_log_assignment(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Log transport plan (B, m + 1, n) for scores (B, m, n) of n tokens over m clusters plus a dustbin row.

    Marginals: each token has mass 1/(m+n); each cluster 1/(m+n) and the dustbin the rest, (n-m)/(m+n), so
    every token is (softly) sent somewhere while each cluster receives about one token's worth. The result is
    rescaled by (m+n) so that a token's column sums to 1 after enough iterations.
    """
    b, m, n = scores.shape
    aug = torch.cat([scores, dustbin.expand(b, 1, n).to(scores.dtype)], dim=1)
    norm = -math.log(m + n)
    log_a = torch.full((b, m + 1), norm, dtype=scores.dtype, device=scores.device)
    log_a[:, -1] += math.log(max(n - m, 1))  # fewer tokens than clusters: the dustbin gets one share
    log_b = torch.full((b, n), norm, dtype=scores.dtype, device=scores.device)
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(iterations):
        u = log_a - torch.logsumexp(aug + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(aug + u[:, :, None], dim=1)
    return aug + u[:, :, None] + v[:, None, :] - norm


class SaladAggregator(nn.Module):
    """(class token (B, C), tokens (B, C, h, w)) -> (B, token_dim + num_clusters * cluster_dim), L2-normalised."""

    def __init__(self, in_dim: int = 768, num_clusters: int = 64, cluster_dim: int = 128, token_dim: int = 256,
                 hidden: int = 512):
        super().__init__()
        self.num_clusters = num_clusters
        # Dropout slots (index 1) are kept so that parameter indices match the release; inference skips them.
        self.token_features = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, token_dim))
        self.cluster_features = nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.Dropout(0.3), nn.ReLU(),
                                              nn.Conv2d(hidden, cluster_dim, 1))
        self.score = nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.Dropout(0.3), nn.ReLU(),
                                   nn.Conv2d(hidden, num_clusters, 1))
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        features = self.cluster_features(tokens).flatten(2)  # (B, cluster_dim, n)
        log_p = sinkhorn_log_assignment(self.score(tokens).flatten(2), self.dust_bin)
        assignment = log_p[:, :-1].exp()  # (B, m, n), dustbin dropped
        clusters = torch.einsum("bdn,bmn->bdm", features, assignment)
        # flattened feature-major (index d * m + k) as the release does: MegaLoc's linear head depends on it
        return F.normalize(torch.cat([F.normalize(self.token_features(token), dim=-1),
                                      F.normalize(clusters, dim=1).flatten(1)], dim=1), dim=-1)


class SaladNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], sides multiples of 14 -> (B, 8448) with the released configuration."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, num_clusters: int = 64, cluster_dim: int = 128,
                 token_dim: int = 256):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = HubBackbone(dim=dim, depth=depth, heads=heads)
        self.aggregator = SaladAggregator(dim, num_clusters, cluster_dim, token_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token, tokens = self.backbone.model(self.normalize(x))
        return self.aggregator(token, tokens)


class Salad(TorchGlobalExtractor):
    """SALAD global descriptors; images are resized to a fixed square (a multiple of 14).

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/dino_salad.ckpt``.
        image_size: the square input side in pixels (release evaluation: 322); rounded down to a multiple of 14.
        dim, depth, heads: the ViT of the checkpoint (ViT-B/14: 768, 12, 12).
        num_clusters, cluster_dim, token_dim: the aggregator of the checkpoint (64, 128, 256).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "salad"

    def __init__(self, weights: str | None = None, image_size: int = 322, dim: int = 768, depth: int = 12,
                 heads: int = 12, num_clusters: int = 64, cluster_dim: int = 128, token_dim: int = 256,
                 batch_size: int = 4, device: str | None = None):
        super().__init__(0, batch_size, device)
        self.weights = weights
        side = max(14, image_size // 14 * 14)
        self.fixed_size = (side, side)
        self.arch = {"dim": dim, "depth": depth, "heads": heads, "num_clusters": num_clusters,
                     "cluster_dim": cluster_dim, "token_dim": token_dim}
        self._weights_path = resolve_weights(weights, "dino_salad.ckpt", "SALAD", "github.com/serizba/salad")

    @property
    def dim(self) -> int:
        return self.arch["num_clusters"] * self.arch["cluster_dim"] + self.arch["token_dim"]

    def _extra_config(self) -> dict:
        return {"weights": self.weights, **self.arch}

    def tag(self) -> str:
        a = self.arch
        arch = "" if a == {"dim": 768, "depth": 12, "heads": 12, "num_clusters": 64, "cluster_dim": 128, "token_dim": 256} \
            else f"-vit{a['dim']}x{a['depth']}h{a['heads']}-k{a['num_clusters']}c{a['cluster_dim']}t{a['token_dim']}"
        return f"salad{arch}-s{self.fixed_size[0]}"  # type: ignore[index]

    def _build(self) -> torch.nn.Module:
        net = SaladNet(**self.arch)
        load_into(net, load_state_dict(self._weights_path, "SALAD"), self._weights_path, "SALAD", strip=("module.",))
        return net
