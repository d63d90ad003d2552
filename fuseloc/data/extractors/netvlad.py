"""NetVLAD (Arandjelović et al., CVPR 2016): VGG16 conv5_3 features, soft-assigned VLAD; weights supplied.

Weights: the checkpoint of Nanne/pytorch-NetVlad (VGG16, 64 clusters, Pittsburgh 30k), published as a Google
Drive folder ``vgg16_netvlad_checkpoint/`` holding ``checkpoints/checkpoint.pth.tar`` (what its ``--resume``
reads). The file is a training checkpoint: ``{'epoch', 'state_dict', 'recalls' (numpy floats), 'best_score'
(a numpy float), 'optimizer', 'parallel'}``, read safely with the numpy allowlist of
:func:`~fuseloc.data.extractors.weights.numpy_safe_globals`. State-dict keys: ``encoder.<i>.{weight,bias}`` for
VGG16 ``features[:29]`` (conv5_3 without its ReLU) and ``pool.conv.weight``, ``pool.centroids`` for the NetVLAD
layer (vladv1: no assignment bias). A multi-GPU run saves ``encoder.module.<i>`` and ``pool.module.*``
(DataParallel around each part); both forms load.

hloc's NetVLAD (``Pitts30K_struct.mat``, MatConvNet weights converted from the original MATLAB release, with
a 4096-D PCA whitening and Caffe-style mean subtraction) is a different model and format: it is refused with
a message, not loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuseloc.data.extractors.backbones import vgg16_features
from fuseloc.data.extractors.base import ImageNetNormalize, TorchGlobalExtractor
from fuseloc.data.extractors.weights import load_into, load_state_dict, rename_prefixes, resolve_weights
from fuseloc.errors import InputError

#: Where the release's file lies once its Google Drive folder is unpacked.
RELEASE_FILE = "vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar"


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
        weights: the checkpoint; default: ``<torch hub dir>/checkpoints/vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar``
            (the release folder unpacked into the torch hub checkpoint directory).
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
        self._weights_path = resolve_weights(weights, RELEASE_FILE, "NetVLAD",
                                             "github.com/Nanne/pytorch-NetVlad (VGG16 checkpoint, README link)")
        if self._weights_path.suffix.lower() == ".mat":
            raise InputError("NetVLAD: hloc's MATLAB-converted weights (.mat) are a different model; this extractor "
                             f"loads pytorch-NetVlad's {RELEASE_FILE!r}", self._weights_path)

    @property
    def dim(self) -> int:
        return self.num_clusters * 512

    def _extra_config(self) -> dict:
        return {"weights": self.weights, "num_clusters": self.num_clusters}

    def _build(self) -> torch.nn.Module:
        net = NetVLADNet(self.num_clusters)
        state = rename_prefixes(load_state_dict(self._weights_path, "NetVLAD"), [("module.", "")])  # wrapped model
        # pytorch-NetVlad wraps each part in DataParallel when trained on several GPUs
        state = rename_prefixes(state, [("encoder.module.", "encoder."), ("pool.module.", "pool.")])
        load_into(net, state, self._weights_path, "NetVLAD")
        return net
