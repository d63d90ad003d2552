"""DINOv2 ViT in plain torch, with the parameter names of DINOv2's torch.hub models.

Shared by the place-recognition networks built on it (SALAD, MegaLoc, CricaVPR): patch 14, LayerScale, final
LayerNorm, position embeddings bicubically resized for inputs other than the training size as DINOv2 does
(scale factor (n + 0.1) / grid). Keys: ``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``,
``blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``: those of DINOv2's
released ``dinov2_vitb14_pretrain.pth`` (a bare state dict; the hub model's ``head`` is an identity and has
none), which loads into :class:`DinoV2` unchanged. MegaLoc's ``model.safetensors`` re-implements the ViT without
``mask_token`` (``mask_token=False``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """A DINOv2 block. ``adapter`` (if given) runs beside the MLP on the same normalised tokens, scaled by
    ``adapter_scale``, as fine-tuned place-recognition variants (CricaVPR) add it; it is called as
    ``adapter(tokens (B, 1 + h*w, D), (h, w)) -> (B, 1 + h*w, D)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, adapter: nn.Module | None = None,
                 adapter_scale: float = 0.2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)
        self.adapter = adapter
        self.adapter_scale = adapter_scale

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        x = x + self.ls1(self.attn(self.norm1(x)))
        h = self.norm2(x)
        out = self.mlp(h)
        if self.adapter is not None:
            out = out + self.adapter_scale * self.adapter(h, grid)
        return x + self.ls2(out)


class DinoV2(nn.Module):
    """DINOv2 ViT: (B, 3, H, W) normalised, H and W multiples of ``patch`` -> (class token (B, D), tokens (B, D, H/p, W/p)).

    Args:
        dim: embedding width (ViT-B: 768).
        depth: number of blocks (ViT-B: 12).
        heads: attention heads (ViT-B: 12).
        patch: patch side in pixels (14).
        train_size: the image side the position embeddings were trained for (518 px, 37 x 37 patches).
        adapter: builds each block's adapter from the width (none in DINOv2 itself).
        mask_token: keep DINOv2's ``mask_token`` (used only by its masked training, stored in its files).
    """

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 14, train_size: int = 518,
                 adapter: Callable[[int], nn.Module] | None = None, mask_token: bool = True):
        super().__init__()
        self.patch = patch
        self.grid = train_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        if mask_token:  # used only by DINOv2's masked training; kept to load its files
            self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, adapter=adapter(dim) if adapter else None)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h*w, D) position embeddings for an h x w patch grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid_pos.shape[-1]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        # DINOv2's +0.1 keeps the floor of the output size at exactly (h, w); the factor also sets the sampling
        grid_pos = F.interpolate(grid_pos.float(), scale_factor=((h + 0.1) / self.grid, (w + 0.1) / self.grid),
                                 mode="bicubic", align_corners=False)
        assert grid_pos.shape[-2:] == (h, w)
        grid_pos = grid_pos.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, d)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        b, _, height, width = x.shape
        h, w = height // self.patch, width // self.patch
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.position_embedding(h, w)
        for block in self.blocks:
            tokens = block(tokens, (h, w))
        tokens = self.norm(tokens)
        return tokens[:, 0], tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w)


class HubBackbone(nn.Module):
    """The ViT under ``.model``, where networks that wrap torch.hub's DINOv2 keep it (``backbone.model.*``)."""

    def __init__(self, **kw: int | bool) -> None:
        super().__init__()
        self.model = DinoV2(**kw)
