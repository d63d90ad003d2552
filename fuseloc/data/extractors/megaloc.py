"""MegaLoc (Berton & Masone, 2025): DINOv2 ViT-B/14 + a wider SALAD aggregator + a linear head; weights supplied.

Architecture of the release (``MegaLoc`` in github.com/gmberton/MegaLoc, ``megaloc_model.py``): a DINOv2
ViT-B/14 (the one of :mod:`~fuseloc.data.extractors.dinov2`, without ``mask_token``); the SALAD
optimal-transport aggregator of :mod:`~fuseloc.data.extractors.salad` with 64 clusters of 256-D features
(twice SALAD's 128) and a 256-D class token projection, hidden width 512, 3 Sinkhorn iterations:
64 x 256 + 256 = 16640 dimensions, L2-normalised; then a linear layer to 8448 dimensions and a final L2
normalisation. The linear head sees the aggregator's output in the release's order (class token first, then
cluster features flattened feature-major).

Weight files, both loaded (the first found when no path is given):

- ``model.safetensors`` from huggingface.co/gberton/MegaLoc, the current release (the repository's
  ``hubconf.py`` fetches it with ``hf_hub_download``, so it is looked for in the Hugging Face cache).
  Keys: ``backbone.{cls_token,pos_embed,patch_embed.proj.*,blocks.<i>.*,norm.*}`` (no ``mask_token``),
  ``aggregator.agg.{token_features.{0,2},cluster_features.{0,3},score.{0,3},dust_bin}``,
  ``aggregator.linear.{weight,bias}``: the parameter names of :class:`MegaLocNet`.
- ``megaloc.torch``, the first release (GitHub release v1.0; ``<torch hub>/checkpoints``): a bare state dict
  that wrapped torch.hub's DINOv2 as ``backbone.model.*``, ``mask_token`` included; renamed on loading.

Preprocessing as hloc's ``megaloc`` configuration: the longest side brought down to at most 1024 pixels
(aspect ratio kept, area filter, sides rounded), ImageNet normalisation (hloc's wrapper applies it; the model
does not), then the model's own step: each side rounded to the *nearest* multiple of 14 by bilinear,
antialiased resizing (torchvision's ``resize``, done here with ``F.interpolate``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.dinov2 import DinoV2
from fuseloc.data.extractors.salad import SaladAggregator
from fuseloc.data.extractors.weights import (
    hub_checkpoint_dir,
    huggingface_cached_file,
    load_into,
    load_state_dict,
    rename_prefixes,
    resolve_weights,
)

#: The released architecture; the extractor's tag names only the differences from it.
RELEASE = {"dim": 768, "depth": 12, "heads": 12, "num_clusters": 64, "cluster_dim": 256, "token_dim": 256,
           "out_dim": 8448}
#: The current release: Hugging Face repository and file name.
HF_REPO, HF_FILE = "gberton/MegaLoc", "model.safetensors"
#: The first release (GitHub v1.0), still loaded.
LEGACY_FILE = "megaloc.torch"
PATCH = 14


def round_to_patch(height: int, width: int, patch: int = PATCH) -> tuple[int, int]:
    """Each side rounded to the nearest multiple of ``patch`` (at least one patch), as the release's model does."""
    return max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch)


def legacy_to_current(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``megaloc.torch`` keys (torch.hub DINOv2 under ``backbone.model.``) -> ``model.safetensors`` keys."""
    if not any(k.startswith(("backbone.model.", "module.backbone.model.")) for k in state):
        return state
    state = rename_prefixes(state, [("module.", "")])
    return rename_prefixes(state, [("backbone.model.", "backbone.")], drop=("backbone.model.mask_token",))


class MegaLocHead(nn.Module):
    """SALAD aggregation (``agg``) followed by the release's linear projection (``linear``)."""

    def __init__(self, in_dim: int, num_clusters: int, cluster_dim: int, token_dim: int, out_dim: int):
        super().__init__()
        self.agg = SaladAggregator(in_dim, num_clusters, cluster_dim, token_dim)
        self.linear = nn.Linear(num_clusters * cluster_dim + token_dim, out_dim)

    def forward(self, token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.agg(token, tokens))


class MegaLocNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, out_dim) L2-normalised (release: 8448).

    Sides that are not multiples of 14 are resized to the nearest ones first, as the release does.
    """

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, num_clusters: int = 64, cluster_dim: int = 256,
                 token_dim: int = 256, out_dim: int = 8448):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = DinoV2(dim=dim, depth=depth, heads=heads, patch=PATCH, mask_token=False)
        self.aggregator = MegaLocHead(dim, num_clusters, cluster_dim, token_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        size = round_to_patch(*x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        token, tokens = self.backbone(x)
        return F.normalize(self.aggregator(token, tokens), dim=-1)


class MegaLoc(TorchGlobalExtractor):
    """MegaLoc global descriptors, preprocessed as hloc does (longest side 1024, aspect kept).

    Args:
        weights: ``model.safetensors`` (or the older ``megaloc.torch``); default: the Hugging Face cache's
            copy of ``gberton/MegaLoc``, else ``<torch hub dir>/checkpoints/megaloc.torch``.
        resize_max: longest image side in pixels before the rounding to multiples of 14 (0 = keep).
        dim, depth, heads: the ViT of the checkpoint (ViT-B/14: 768, 12, 12).
        num_clusters, cluster_dim, token_dim: the aggregator of the checkpoint (64, 256, 256).
        out_dim: the linear head's output, the descriptor's size (8448).
        batch_size: images per forward pass (descriptors do not depend on it).
        device: default CUDA when available.
    """

    name = "megaloc"

    def __init__(self, weights: str | None = None, resize_max: int = 1024, dim: int = 768, depth: int = 12,
                 heads: int = 12, num_clusters: int = 64, cluster_dim: int = 256, token_dim: int = 256,
                 out_dim: int = 8448, batch_size: int = 4, device: str | None = None):
        super().__init__(resize_max, batch_size, device)
        self.weights = weights
        self.arch = {"dim": dim, "depth": depth, "heads": heads, "num_clusters": num_clusters,
                     "cluster_dim": cluster_dim, "token_dim": token_dim, "out_dim": out_dim}
        self._weights_path: Path = resolve_weights(
            weights, HF_FILE, "MegaLoc", f"huggingface.co/{HF_REPO}", default=huggingface_cached_file(HF_REPO, HF_FILE),
            alternatives=[hub_checkpoint_dir() / LEGACY_FILE])

    @property
    def dim(self) -> int:
        return self.arch["out_dim"]

    def _extra_config(self) -> dict:
        return {"weights": self.weights, **self.arch}

    def tag(self) -> str:
        a = self.arch
        arch = "" if a == RELEASE else (f"-vit{a['dim']}x{a['depth']}h{a['heads']}-k{a['num_clusters']}"
                                        f"c{a['cluster_dim']}t{a['token_dim']}o{a['out_dim']}")
        return f"megaloc{arch}-r{self.resize_max}"

    def _build(self) -> torch.nn.Module:
        net = MegaLocNet(**self.arch)
        state = legacy_to_current(load_state_dict(self._weights_path, "MegaLoc"))
        load_into(net, state, self._weights_path, "MegaLoc", strip=("module.",))
        return net
