"""CricaVPR (Lu et al., CVPR 2024): adapted DINOv2 ViT-B/14, multi-scale regional GeM, a cross-image encoder.

Architecture of the release (github.com/Lu-Feng/CricaVPR, ``CricaVPRNet``):

- Backbone: the DINOv2 ViT-B/14 of :mod:`~fuseloc.data.extractors.dinov2` (position embeddings stored for
  518 px, 37 x 37 patches, as DINOv2's: the release builds ``vit_base(img_size=518)``) run on 224 px inputs
  (16 x 16 patches) and, in every block, a multi-scale convolutional adapter beside the MLP (added as
  ``0.2 * adapter(norm2(x))`` before LayerScale): a 768 -> 384 linear + ReLU, on the patch grid three
  branches (1x1 -> 192; 1x1 -> 24 -> 3x3 -> 96; 1x1 -> 24 -> 5x5 -> 96, each conv with bias, BatchNorm
  eps 1e-3 and ReLU) concatenated back to 384, the class token passed through, a residual of the 384-D input,
  and a 384 -> 768 linear.
- Aggregation: the final-normed class token, plus GeM (learned p) of the channel-L2-normalised patch tokens
  over the 2 x 2 and 3 x 3 regions of the grid (row-major; on 16 x 16: 0:8 | 8:16 and 0:5 | 5:11 | 11:16;
  other grids split at round(i n / k)), give 1 + 4 + 9 = 14 vectors of 768.
- Cross-image encoder: a 2-layer transformer encoder (16 heads, feed-forward 2048, GELU, post-norm) run with
  the batch as its sequence axis, so each of the 14 vectors of an image attends to the same vector of the
  other images in the batch; the 14 outputs are concatenated (14 x 768 = 10752) and L2-normalised.

Batch composition: fuseloc describes images independently and caches the result, so by default the
encoder sees each image alone (a sequence of one; attention then reduces to the value and output
projections): a descriptor never depends on its batch neighbours, on the batch size or on the order images
are extracted in, and caches stay deterministic. ``cross_image=True`` on :class:`CricaVPRNet` restores the
release's batch-wide behaviour for experiments; the extractor never uses it. ⚠ The published results were
computed with batch-mates, so independent descriptors may score somewhat differently.

Weights: ``CricaVPR.pth`` (github.com/Lu-Feng/CricaVPR, GitHub release v1.0, also a Google Drive link in its
README). It is the training script's checkpoint, ``{'epoch_num', 'model_state_dict', 'optimizer_state_dict',
'recalls' (a numpy float64 array), 'best_r5' (a numpy float64), 'not_improved_num'}`` (its ``hubconf.py`` reads
``model_state_dict``), read safely with the numpy allowlist of
:func:`~fuseloc.data.extractors.weights.numpy_safe_globals`. The state dict is DataParallel's:
``module.backbone.<DINOv2 keys>`` (``mask_token`` included; adapters: ``blocks.<i>.adapter.{D_fc1,D_fc2,
branch1.{conv,bn},branch2.{0,1}.{conv,bn},branch3.{0,1}.{conv,bn}}``), ``module.aggregation.1.p`` and
``module.encoder.layers.{0,1}.*`` (torch's ``TransformerEncoderLayer`` names). The position-embedding grid is
read from the file, so a checkpoint stored at another size also loads. Input: 224 x 224 (the repository's
``--resize`` default, used for training and evaluation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.dinov2 import DinoV2
from fuseloc.data.extractors.eigenplaces import GeM, L2Norm
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights

#: The released architecture; the extractor's tag names only the differences from it.
RELEASE = {"dim": 768, "depth": 12, "heads": 12, "encoder_heads": 16, "encoder_ffn": 2048, "encoder_layers": 2}
#: Region grids pooled besides the class token: 2 x 2 and 3 x 3.
SPLITS = (2, 3)


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class MultiConvAdapter(nn.Module):
    """CricaVPR's adapter: tokens (B, 1 + h*w, D), grid (h, w) -> (B, 1 + h*w, D).

    Widths scale with D as in the release (D = 768: hidden 384, branches 192 + 96 + 96, reductions 24).
    """

    def __init__(self, dim: int):
        super().__init__()
        hidden, reduced = dim // 2, dim // 32
        self.D_fc1 = nn.Linear(dim, hidden)
        self.branch1 = ConvBnRelu(hidden, dim // 4, 1)
        self.branch2 = nn.Sequential(ConvBnRelu(hidden, reduced, 1), ConvBnRelu(reduced, dim // 8, 3))
        self.branch3 = nn.Sequential(ConvBnRelu(hidden, reduced, 1), ConvBnRelu(reduced, hidden - dim // 4 - dim // 8, 5))
        self.D_fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x0 = F.relu(self.D_fc1(x))
        b, _, c = x0.shape
        patches = x0[:, 1:].transpose(1, 2).reshape(b, c, *grid)
        conv = torch.cat([self.branch1(patches), self.branch2(patches), self.branch3(patches)], dim=1)
        out = torch.cat([x0[:, :1], conv.flatten(2).transpose(1, 2)], dim=1) + x0
        return self.D_fc2(out)


def region_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous, near-equal parts of range(n): on n = 16, (0, 8), (8, 16) and (0, 5), (5, 11), (11, 16)."""
    cuts = [round(i * n / k) for i in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class CricaVPRNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], sides multiples of 14 -> (B, 14 * dim) L2-normalised (release: 10752).

    Args:
        dim, depth, heads: the ViT (ViT-B/14: 768, 12, 12).
        train_size: the side the position embeddings are stored for (release: 518, 37 x 37 patches).
        encoder_heads, encoder_ffn, encoder_layers: the cross-image encoder (16, 2048, 2).
        cross_image: let the images of a batch attend to each other, as the release does; False describes
            each image as if it were alone.
    """

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, train_size: int = 518, encoder_heads: int = 16,
                 encoder_ffn: int = 2048, encoder_layers: int = 2, cross_image: bool = False):
        super().__init__()
        self.cross_image = cross_image
        self.normalize = ImageNetNormalize()
        self.backbone = DinoV2(dim, depth, heads, train_size=train_size, adapter=MultiConvAdapter)
        self.aggregation = nn.Sequential(L2Norm(), GeM())
        layer = nn.TransformerEncoderLayer(dim, encoder_heads, encoder_ffn, dropout=0.1, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token, patches = self.backbone(self.normalize(x))
        h, w = patches.shape[-2:]
        parts = [token]
        for k in SPLITS:
            for r0, r1 in region_bounds(h, k):
                for c0, c1 in region_bounds(w, k):
                    parts.append(self.aggregation(patches[:, :, r0:r1, c0:c1])[:, :, 0, 0])
        regions = torch.stack(parts, dim=1)  # (B, 14, D)
        # the encoder is sequence-first: (B, 14, D) makes the batch the sequence; (1, B*14, D) keeps images apart
        b, n, d = regions.shape
        encoded = self.encoder(regions if self.cross_image else regions.reshape(1, b * n, d))
        return F.normalize(encoded.reshape(b, n * d), dim=-1)


class CricaVPR(TorchGlobalExtractor):
    """CricaVPR global descriptors, each image described on its own; images are resized to a fixed square.

    Args:
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/CricaVPR.pth``.
        image_size: the square input side in pixels (release: 224); rounded down to a multiple of 14.
        dim, depth, heads: the ViT of the checkpoint (ViT-B/14: 768, 12, 12).
        encoder_heads, encoder_ffn, encoder_layers: the cross-image encoder of the checkpoint (16, 2048, 2).
        batch_size: images per forward pass (descriptors do not depend on it).
        device: default CUDA when available.
    """

    name = "cricavpr"

    def __init__(self, weights: str | None = None, image_size: int = 224, dim: int = 768, depth: int = 12,
                 heads: int = 12, encoder_heads: int = 16, encoder_ffn: int = 2048, encoder_layers: int = 2,
                 batch_size: int = 4, device: str | None = None):
        super().__init__(0, batch_size, device)
        self.weights = weights
        side = max(14, image_size // 14 * 14)
        self.fixed_size = (side, side)
        self.arch = {"dim": dim, "depth": depth, "heads": heads, "encoder_heads": encoder_heads,
                     "encoder_ffn": encoder_ffn, "encoder_layers": encoder_layers}
        self._weights_path = resolve_weights(weights, "CricaVPR.pth", "CricaVPR",
                                             "github.com/Lu-Feng/CricaVPR (release v1.0)")

    @property
    def dim(self) -> int:
        return (1 + sum(k * k for k in SPLITS)) * self.arch["dim"]

    def _extra_config(self) -> dict:
        return {"weights": self.weights, **self.arch}

    def tag(self) -> str:
        a = self.arch
        arch = "" if a == RELEASE else (f"-vit{a['dim']}x{a['depth']}h{a['heads']}"
                                        f"-enc{a['encoder_layers']}h{a['encoder_heads']}f{a['encoder_ffn']}")
        return f"cricavpr{arch}-s{self.fixed_size[0]}"  # type: ignore[index]

    def _build(self) -> torch.nn.Module:
        state = load_state_dict(self._weights_path, "CricaVPR")
        pos = next((v for k, v in state.items() if k.removeprefix("module.") == "backbone.pos_embed"), None)
        # the grid the file's position embeddings were trained for; a wrong shape is reported by load_into
        grid = round((pos.shape[1] - 1) ** 0.5) if pos is not None and pos.ndim == 3 else 37
        net = CricaVPRNet(**self.arch, train_size=grid * 14)
        load_into(net, state, self._weights_path, "CricaVPR", strip=("module.",))
        return net
