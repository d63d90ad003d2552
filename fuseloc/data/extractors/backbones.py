"""VGG16 and ResNet backbones in plain torch (no torchvision), with torchvision's parameter names.

The names matter: released place-recognition checkpoints were trained on torchvision modules, so their
state dicts use torchvision's keys (``features.28.weight`` for VGG16's conv5_3, ``layer3.5.conv2.weight``
for ResNet50), and matching them lets those files load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

#: VGG16 configuration "D": channels per conv, "M" for 2x2 max-pooling.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    """VGG16's ``features``: index i holds the same layer as ``torchvision.models.vgg16().features[i]``."""
    layers: list[nn.Module] = []
    channels = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """ResNet18/34 block, as torchvision."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


_RESNETS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
            101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """torchvision's ResNet trunk (conv1 ... layer4, no pooling or classifier) with the same attribute names.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_layers: how many of layer1..layer4 to keep (MixVPR drops layer4: 3).
    """

    def __init__(self, depth: int = 50, num_layers: int = 4):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        block, counts = _RESNETS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        self.num_layers = num_layers
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=False)):
            if i < num_layers:
                setattr(self, f"layer{i + 1}", self._make_layer(block, planes, count, stride=1 if i == 0 else 2))
        self.out_channels = self.inplanes

    def _make_layer(self, block: type[nn.Module], planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        expansion = block.expansion  # type: ignore[attr-defined]
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * expansion
        layers += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        """The modules in order, as ``list(torchvision_resnet.children())[:4 + num_layers]``."""
        return [self.conv1, self.bn1, self.relu, self.maxpool] + [getattr(self, f"layer{i + 1}") for i in range(self.num_layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x
