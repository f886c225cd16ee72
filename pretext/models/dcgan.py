"""DCGAN-style inpainting networks of the paper (128 px in, 4000-unit bottleneck, 64 px centre out)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from .kernels import FastConvTranspose2d, WholeInputConv2d, WholeInputConvTranspose2d, is_channels_last

DCGAN_WIDTHS = (64, 64, 128, 256, 512)


def _down(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [FastConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANEncoder(nn.Module):
    """4x4 stride-2 convs down to 4x4 (BN after the first), then a 4x4 valid conv to the bottleneck."""

    def __init__(self, input_size: int = 128, widths: Sequence[int] = DCGAN_WIDTHS, bottleneck: int = 4000) -> None:
        super().__init__()
        n_down = int(math.log2(input_size // 4))
        if input_size < 32 or 4 * 2**n_down != input_size or len(widths) != n_down:
            raise ValueError(f"DCGAN encoder: input_size {input_size} needs {n_down} widths (4 * 2^k px), got {list(widths)}")
        chans = [3, *widths]
        layers = [m for i in range(n_down) for m in _down(chans[i], chans[i + 1], bn=i > 0)]
        self.features = nn.Sequential(*layers)
        self.bottleneck = nn.Sequential(WholeInputConv2d(widths[-1], bottleneck, 4, bias=False), nn.BatchNorm2d(bottleneck),
                                        nn.LeakyReLU(0.2, inplace=True))
        self.input_size, self.out_channels = input_size, bottleneck
        dcgan_init(self)

    def forward(self, x: torch.Tensor, out: str = "bottleneck") -> torch.Tensor:
        """(B, 3, S, S) -> (B, bottleneck, 1, 1), or the last conv map (B, C, 4, 4) with out='conv'."""
        if out not in ("conv", "bottleneck"):
            raise ValueError(f"unknown DCGAN encoder output {out!r}; choose conv or bottleneck")
        x = self.features(x)
        return x if out == "conv" else self.bottleneck(x)


class DCGANGenerator(nn.Module):
    """Encoder-decoder generator; output 'center' = the central quarter (S/2), 'full' = the whole image."""

    def __init__(self, input_size: int = 128, widths: Sequence[int] = DCGAN_WIDTHS, bottleneck: int = 4000,
                 output: str = "center") -> None:
        super().__init__()
        if output not in ("center", "full"):
            raise ValueError(f"DCGAN output must be center or full, got {output!r}")
        self.encoder = DCGANEncoder(input_size, widths, bottleneck)
        chans = list(reversed(widths)) if output == "full" else list(reversed(widths))[:-1]
        layers = [WholeInputConvTranspose2d(bottleneck, chans[0], 4, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        layers += [m for a, b in zip(chans[:-1], chans[1:]) for m in _up(a, b)]
        layers += [FastConvTranspose2d(chans[-1], 3, 4, stride=2, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        self.out_size = input_size if output == "full" else input_size // 2
        dcgan_init(self.decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Masked image (B, 3, S, S) -> prediction (B, 3, out, out) in [-1, 1]."""
        h = self.decoder[0](self.encoder(x))  # the 1x1 -> 4x4 matrix product answers in NCHW ...
        if is_channels_last(x):  # ... the up-convolutions get the input's layout back
            h = h.contiguous(memory_format=torch.channels_last)
        for layer in itertools.islice(self.decoder, 1, None):
            h = layer(h)
        return h


class DCGANDiscriminator(nn.Module):
    """Sees only the predicted or real content (no context, no noise); returns one logit per image."""

    def __init__(self, input_size: int = 64, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        n_down = int(math.log2(input_size // 4))
        if input_size < 16 or 4 * 2**n_down != input_size:
            raise ValueError(f"discriminator input_size must be 4 * 2^k >= 16, got {input_size}")
        widths = list(widths)[:n_down] + [widths[-1]] * max(0, n_down - len(widths))
        chans = [3, *widths]
        layers = [m for i in range(n_down) for m in _down(chans[i], chans[i + 1], bn=i > 0)]
        layers.append(WholeInputConv2d(widths[-1], 1, 4))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B,) logits."""
        return self.net(x).flatten()
