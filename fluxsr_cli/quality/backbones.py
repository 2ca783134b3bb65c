"""torchvision's ImageNet feature stacks (VGG16, AlexNet) in plain torch, for the learned metrics.

torchvision is not needed: each module's names mirror torchvision's ``vgg16().features`` and
``alexnet().features``, so torchvision's published state dicts (``vgg16-397923af.pth``,
``alexnet-owt-7be5be79.pth``) load key for key (``features.0.weight`` ...). ``forward`` returns the
ReLU activations LPIPS reads ("taps"); layers after the last tap are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from fluxsr_cli.quality.weights import WeightFile

_TORCHVISION = "https://download.pytorch.org/models/"

# torchvision's vgg16().features up to relu5_3: ints are 3x3 convs (out channels), "M" a 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:30]``; ``forward`` returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    weights = WeightFile("vgg16-397923af.pth", _TORCHVISION + "vgg16-397923af.pth", check_hash=True)
    taps = (3, 8, 15, 22, 29)  # indices in ``features`` of those ReLUs
    channels = (64, 128, 256, 512, 512)
    min_side = 16  # four 2x2 pools before relu5_3

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # keys match torchvision: features.{0,2,5,...,28}.*

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _taps(self.features, self.taps, x)  # [B, C_l, H / 2^l, W / 2^l]


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features[:12]``; ``forward`` returns the five ReLU outputs relu1 ... relu5."""

    weights = WeightFile("alexnet-owt-7be5be79.pth", _TORCHVISION + "alexnet-owt-7be5be79.pth", check_hash=True)
    taps = (1, 4, 7, 9, 11)
    channels = (64, 192, 384, 256, 256)
    # conv1 (11x11, stride 4, pad 2) then two 3x3 stride-2 pools: the second needs 3x3 in, so h1 >= 7,
    # and h1 = (H - 7) // 4 + 1 gives H >= 31.
    min_side = 31

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(  # keys match torchvision: features.{0,3,6,8,10}.*
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),  # 0, 1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),  # 3, 4
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),  # 6, 7
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),  # 8, 9
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),  # 10, 11
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _taps(self.features, self.taps, x)


def _taps(features: nn.Sequential, taps: tuple[int, ...], x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out
