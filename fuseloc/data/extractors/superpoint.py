"""SuperPoint (DeTone et al., CVPRW 2018) in plain torch; weights supplied by the user.

Parameter names follow Magic Leap's release (``superpoint_v1.pth``: ``conv1a.weight`` ... ``convDb.bias``),
which hloc and LightGlue load too. Post-processing as Magic Leap's SuperGlue code, which hloc runs:

* heatmap: softmax over the 65 bins, the "no keypoint" bin dropped, cells unfolded to pixels;
* :func:`simple_nms`: max-pool NMS with two extra suppression rounds (a pixel suppressed by a kept maximum
  cannot suppress others, so maxima next to a suppressed area come back);
* keypoints: post-NMS score above ``detection_threshold``, ``remove_borders`` pixels dropped, top-k;
* descriptors: :func:`sample_descriptors`, bilinear samples of the *L2-normalised* dense map with the
  release's coordinate mapping (``x - s/2 + 0.5`` over ``W s - s/2 - 0.5``, ``align_corners=True``), then
  L2-normalised again. That mapping is slightly off the cell centres (hloc keeps it, with an opt-in
  ``fix_sampling``); we keep it so descriptors equal hloc's.

Image sides need not be multiples of 8: the encoder's pooling floors them and the bottom/right remainder
is never a keypoint, as in the release. Defaults are hloc's ``superpoint_aachen`` preset (nms_radius 3,
4096 keypoints, longest side 1024); hloc's model default radius is 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.base import Detections, TorchLocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights


class SuperPointNet(nn.Module):
    """The shared encoder with detector and descriptor heads.

    Input (B, 1, H, W) grayscale in [0, 1], H and W multiples of 8. Output: logits (B, 65, H/8, W/8) and
    raw descriptors (B, 256, H/8, W/8).
    """

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
        self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convPb = nn.Conv2d(c5, 65, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convDb = nn.Conv2d(c5, 256, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = ((self.conv1a, self.conv1b), (self.conv2a, self.conv2b), (self.conv3a, self.conv3b), (self.conv4a, self.conv4b))
        for i, (a, b) in enumerate(pairs):
            x = F.relu(b(F.relu(a(x))))
            if i < 3:
                x = F.max_pool2d(x, 2)
        logits = self.convPb(F.relu(self.convPa(x)))
        desc = self.convDb(F.relu(self.convDa(x)))
        return logits, desc


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean (B, H, W) keypoint mask of (B, H, W) scores: the release's max-pool NMS with two extra rounds.

    Round 0 keeps the maxima of their (2r+1)^2 window. Each further round removes the windows around kept
    points and keeps the maxima of what remains that are outside those windows.
    """
    if radius < 0:
        raise ValueError(f"nms radius must be >= 0, got {radius}")

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x[:, None], kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0]

    keep = scores == pool(scores)
    for _ in range(2):
        suppressed = pool(keep.float()) > 0
        rest = torch.where(suppressed, torch.zeros_like(scores), scores)
        keep = keep | ((rest == pool(rest)) & ~suppressed)
    return keep


def sample_descriptors(desc: torch.Tensor, keypoints: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Descriptors (N, D) at keypoints (N, 2) (x, y; pixel centres at integers) of one (D, Hc, Wc) dense map.

    The release's sampling: the dense map is L2-normalised per position, keypoints are mapped to
    ``(x - cell/2 + 0.5) / (Wc cell - cell/2 - 0.5)`` (so pixel 3.5 is the first cell's centre and the
    last pixel, ``Wc cell - 1``, the last cell's), sampled bilinearly with ``align_corners=True``, and the
    samples L2-normalised.
    """
    d, hc, wc = desc.shape
    dense = F.normalize(desc, dim=0)
    shifted = keypoints - cell / 2 + 0.5
    span = shifted.new_tensor([wc * cell - cell / 2 - 0.5, hc * cell - cell / 2 - 0.5])
    grid = (shifted / span * 2 - 1).view(1, 1, -1, 2)
    out = F.grid_sample(dense[None], grid.to(dense.dtype), mode="bilinear", align_corners=True)
    return F.normalize(out[0, :, 0].T, dim=1)


class SuperPoint(TorchLocalExtractor):
    """SuperPoint keypoints and 256-D descriptors.

    Args:
        weights: path of ``superpoint_v1.pth``; default: the torch hub checkpoint directory.
        max_keypoints: keep the strongest keypoints (0 = all above the threshold).
        resize_max: longest image side before extraction (0 = keep).
        detection_threshold: minimum heatmap probability (hloc: 0.005).
        nms_radius: non-maximum suppression radius in pixels (hloc's superpoint_aachen: 3; its model default: 4).
        remove_borders: ignore detections this close to the border, in pixels.
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "superpoint"

    def __init__(self, weights: str | None = None, max_keypoints: int = 4096, resize_max: int = 1024,
                 detection_threshold: float = 0.005, nms_radius: int = 3, remove_borders: int = 4,
                 batch_size: int = 4, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.weights = weights
        self.detection_threshold = detection_threshold
        self.nms_radius = nms_radius
        self.remove_borders = remove_borders
        self._weights_path = resolve_weights(weights, "superpoint_v1.pth", "SuperPoint",
                                             "github.com/magicleap/SuperPointPretrainedNetwork")

    @property
    def dim(self) -> int:
        return 256

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "detection_threshold": self.detection_threshold, "nms_radius": self.nms_radius,
                "remove_borders": self.remove_borders}

    def _build(self) -> torch.nn.Module:
        net = SuperPointNet()
        load_into(net, load_state_dict(self._weights_path, "SuperPoint"), self._weights_path, "SuperPoint", strip=("module.",))
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        gray = (0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2])[:, None]
        logits, desc = net(gray)
        b, _, hc, wc = logits.shape
        prob = logits.softmax(1)[:, :64]  # the 65th bin is "no keypoint in this cell"
        heat = prob.view(b, 8, 8, hc, wc).permute(0, 3, 1, 4, 2).reshape(b, hc * 8, wc * 8)
        keep = simple_nms(heat, self.nms_radius) & (heat > self.detection_threshold)
        if self.remove_borders:
            r = self.remove_borders
            border = torch.zeros_like(keep)
            border[:, r:-r, r:-r] = True
            keep &= border
        out = []
        for i in range(b):
            ys, xs = torch.nonzero(keep[i], as_tuple=True)
            scores = heat[i, ys, xs]
            if self.max_keypoints and len(scores) > self.max_keypoints:
                top = scores.topk(self.max_keypoints).indices
                ys, xs, scores = ys[top], xs[top], scores[top]
            kp = torch.stack([xs, ys], 1).to(heat.dtype)
            out.append(Detections(kp, sample_descriptors(desc[i], kp), scores))
        return out
