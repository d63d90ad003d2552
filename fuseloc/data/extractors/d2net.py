"""D2-Net (Dusmanu et al., CVPR 2019): dense VGG16 conv4_3 features, detect-and-describe; weights supplied.

The network is the release's test-time variant: VGG16 up to conv4_3 with pool3 replaced by a 2x2 average pool
of stride 1 and conv4_* dilated by 2, so the 512-D feature map keeps stride 4. Parameter names follow the
release checkpoints (``d2_tf.pth``, ``d2_ots.pth``: ``{"model": {"dense_feature_extraction.model.<i>.weight"
...}}``, i = the torchvision VGG16 ``features`` index: 0, 2, 5, 7, 10, 12, 14, 17, 19, 21). ⚠ Written from
the paper and the released names as remembered, not checked against a real file here.

Detection is the paper's hard rule at test time: a feature-map position is a keypoint when its strongest
channel is also a 3x3 spatial maximum in that channel, passes the Hessian edge test (ratio 5), and its
quadratic sub-pixel refinement moves it by less than half a cell. Score = that channel's activation.
Feature-map position p maps to image pixel ``4 p + 1.5`` (the centre of its 4x4 block, hloc convention),
as the release does; the 2x2 stride-1 average pool shifts true receptive-field centres by another half
cell, which the release ignores and so do we, to keep keypoints identical. Single scale only (the
release's ``--multiscale`` pyramid is not implemented).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import vgg16_features
from fuseloc.data.extractors.base import (
    Detections,
    TorchLocalExtractor,
    load_into,
    load_state_dict,
    resolve_weights,
)

#: Caffe-style BGR means (0-255) the released VGG16 weights were trained with.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
#: pixel = STRIDE * cell + OFFSET (two 2x2 max-pools, each mapping p -> 2p + 0.5).
STRIDE, OFFSET = 4, 1.5


class DenseFeatureExtraction(nn.Module):
    """(B, 3, H, W) caffe-normalised BGR -> (B, 512, H/4 - 1, W/4 - 1), after ReLU."""

    def __init__(self) -> None:
        super().__init__()
        layers = list(vgg16_features().children())[:22]  # conv1_1 ... conv4_3 (without its ReLU)
        layers[16] = nn.AvgPool2d(2, stride=1)  # pool3 -> keep resolution; dilation below keeps receptive fields
        for i in (17, 19, 21):
            conv = layers[i]
            assert isinstance(conv, nn.Conv2d)
            layers[i] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=2, dilation=2)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.model(x))


class D2NetModel(nn.Module):
    """RGB in [0, 1] -> dense features; the attribute name matches the release's state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatureExtraction()
        self.register_buffer("mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.dense_feature_extraction(rgb.flip(1) * 255.0 - self.mean)


@torch.no_grad()
def hard_detections(features: torch.Tensor, edge_threshold: float = 5.0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """D2-Net's test-time detections on (B, C, h, w) features.

    Returns, per image, (positions (N, 2) refined (row, col) in feature-map cells, channel (N,), score (N,)).
    Only each position's strongest channel can fire (ties at the max are measure-zero with real features);
    the spatial max, derivatives and Hessian are taken in that channel with zero padding, as the release's
    3x3 filters do.
    """
    b, _, h, w = features.shape
    score, channel = features.max(dim=1)  # (B, h, w)
    padded = F.pad(features, (1, 1, 1, 1))
    index = channel[:, None]

    def at(dy: int, dx: int) -> torch.Tensor:
        """The strongest channel's value at the neighbour (dy, dx) of every position, (B, h, w)."""
        return padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].gather(1, index)[:, 0]

    n = {(dy, dx): at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    is_local_max = torch.stack(list(n.values())).amax(0) <= score
    dii = n[(-1, 0)] - 2 * score + n[(1, 0)]
    djj = n[(0, -1)] - 2 * score + n[(0, 1)]
    dij = 0.25 * (n[(-1, -1)] - n[(-1, 1)] - n[(1, -1)] + n[(1, 1)])
    di = 0.5 * (n[(1, 0)] - n[(-1, 0)])
    dj = 0.5 * (n[(0, 1)] - n[(0, -1)])
    det = dii * djj - dij * dij
    trace = dii + djj
    is_not_edge = (det > 0) & (trace * trace <= (edge_threshold + 1) ** 2 / edge_threshold * det)
    safe = torch.where(det > 0, det, torch.ones_like(det))
    # Newton step -H^-1 g towards the extremum of the local quadratic
    step_i = -(djj * di - dij * dj) / safe
    step_j = -(-dij * di + dii * dj) / safe
    refined_ok = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
    keep = is_local_max & is_not_edge & refined_ok
    out = []
    for k in range(b):
        rows, cols = torch.nonzero(keep[k], as_tuple=True)
        pos = torch.stack([rows + step_i[k, rows, cols], cols + step_j[k, rows, cols]], 1)
        # the release drops refined positions whose bilinear neighbourhood leaves the map
        inside = (pos[:, 0] >= 0) & (pos[:, 0] <= h - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= w - 1)
        rows, cols, pos = rows[inside], cols[inside], pos[inside]
        out.append((pos, channel[k, rows, cols], score[k, rows, cols]))
    return out


def bilinear_at(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N, C) bilinear samples of one (C, h, w) map at (N, 2) (row, col) positions inside the map."""
    _, h, w = features.shape
    size = positions.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = (positions.flip(1) / size * 2 - 1).view(1, 1, -1, 2)
    return F.grid_sample(features[None], grid.to(features.dtype), mode="bilinear", align_corners=True)[0, :, 0].T


class D2Net(TorchLocalExtractor):
    """D2-Net keypoints with 512-D descriptors.

    Args:
        weights: path of ``d2_tf.pth``; default: the torch hub checkpoint directory.
        max_keypoints: keep the highest-scoring keypoints (0 = all detections).
        resize_max: longest image side before extraction (0 = keep); the release uses 1600.
        edge_threshold: Hessian eigenvalue-ratio bound of the edge test (release: 5).
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "d2net"
    size_multiple = 4

    def __init__(self, weights: str | None = None, max_keypoints: int = 4096, resize_max: int = 1600,
                 edge_threshold: float = 5.0, batch_size: int = 2, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.weights = weights
        self.edge_threshold = edge_threshold
        self._weights_path = resolve_weights(weights, "d2_tf.pth", "D2-Net", "github.com/mihaidusmanu/d2-net")

    @property
    def dim(self) -> int:
        return 512

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "edge_threshold": self.edge_threshold}

    def _build(self) -> torch.nn.Module:
        net = D2NetModel()
        load_into(net, load_state_dict(self._weights_path, "D2-Net"), self._weights_path, "D2-Net", strip=("module.",))
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        features = net(batch)
        out = []
        for k, (pos, _, scores) in enumerate(hard_detections(features, self.edge_threshold)):
            if self.max_keypoints and len(scores) > self.max_keypoints:
                top = scores.topk(self.max_keypoints).indices
                pos, scores = pos[top], scores[top]
            desc = F.normalize(bilinear_at(features[k], pos), dim=1)
            keypoints = (pos * STRIDE + OFFSET).flip(1)  # (row, col) cells -> (x, y) pixels
            out.append(Detections(keypoints, desc, scores))
        return out
