"""Context-encoder network: encoder -> channel-wise fully-connected layer -> stride-1 conv -> up-conv decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .kernels import FastConvTranspose2d, is_channels_last


class ChannelWiseFC(nn.Module):
    """Per-channel dense map of the n x n feature grid: m * n^4 weights instead of m^2 * n^4."""

    def __init__(self, channels: int, size: int, bias: bool = True) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        n2 = size * size
        self.weight = nn.Parameter(torch.randn(channels, n2, n2) * math.sqrt(2.0 / n2))
        self.bias = nn.Parameter(torch.zeros(channels, n2)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m, n, n) -> (B, m, n, n)."""
        b, m, h, w = x.shape
        if (m, h, w) != (self.channels, self.size, self.size):
            raise ValueError(f"ChannelWiseFC expects (B, {self.channels}, {self.size}, {self.size}), got {tuple(x.shape)}")
        y = torch.bmm(x.reshape(b, m, h * w).transpose(0, 1), self.weight)  # (m, B, n^2)
        y = y.transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(b, m, h, w)


def upconv_plan(n: int, target: int, layers: int = 5) -> list[tuple[int, int, int, int, int]]:
    """(in, out, kernel, stride, padding) per up-convolution so `layers` of them map n -> target exactly."""
    if target < n or layers < 1:
        raise ValueError(f"cannot up-sample {n} -> {target} with {layers} layers")
    chain = [target]
    while len(chain) <= layers:
        prev = _halve(chain[-1])
        if prev < n:
            break
        chain.append(prev)
    chain.reverse()  # chain[0] >= n; len(chain) - 1 stride-2 steps
    if len(chain) - 1 == layers and chain[0] != n:
        chain = chain[1:]
    sizes = [n, *chain] if chain[0] != n else chain
    while len(sizes) - 1 < layers:  # pad with size-preserving layers after the first
        sizes.insert(1, sizes[1] if len(sizes) > 1 else n)
    return [(a, b, *_solve(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]


def _halve(b: int) -> int:
    # Size whose stride-2 up-conv (kernel 3 for odd, 4 for even, no padding) gives exactly b.
    return (b - 3) // 2 + 1 if b % 2 else b // 2 - 1


def _solve(a: int, b: int) -> tuple[int, int, int]:
    for stride in (2, 1, 3, 4):
        for pad in range(4):
            k = b - (a - 1) * stride + 2 * pad
            if max(2, stride) <= k <= stride + 4 or (stride == 1 and k == 3):
                return k, stride, pad
    raise ValueError(f"no up-convolution maps {a} -> {b}")


class UpconvDecoder(nn.Module):
    """Five up-convolutions with ReLU (optionally BatchNorm) to a `target` x `target` RGB image."""

    def __init__(self, in_channels: int, in_size: int, target: int, widths: Sequence[int] = (128, 64, 64, 32),
                 norm: str = "none", out_act: nn.Module | None = None) -> None:
        super().__init__()
        chans = [in_channels, *widths, 3]
        plan = upconv_plan(in_size, target, layers=len(chans) - 1)
        layers: list[nn.Module] = []
        for i, (_, _, k, s, p) in enumerate(plan):
            layers.append(FastConvTranspose2d(chans[i], chans[i + 1], k, stride=s, padding=p))
            if i < len(plan) - 1:
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(chans[i + 1]))
                layers.append(nn.ReLU(inplace=True))
        if out_act is not None:
            layers.append(out_act)
        self.layers = nn.Sequential(*layers)
        self.target = target

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, n, n) -> (B, 3, target, target)."""
        return self.layers(z)


class ContextEncoderNet(nn.Module):
    """The paper's feature-learning context encoder; `encoder` is any module returning (B, m, n, n)."""

    def __init__(self, encoder: nn.Module, feat_channels: int, feat_size: int, out_size: int,
                 decoder_widths: Sequence[int] = (128, 64, 64, 32), dropout: float = 0.5,
                 decoder_norm: str = "none") -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = nn.Sequential(
            ChannelWiseFC(feat_channels, feat_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(feat_channels, feat_channels, 1),  # the stride-1 conv that mixes channels
            nn.ReLU(inplace=True),
        )
        self.decoder = UpconvDecoder(feat_channels, feat_size, out_size, decoder_widths, decoder_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Masked image (B, 3, H, W) -> prediction (B, 3, out, out)."""
        z = self.bottleneck(self.encoder(x))
        # the channel-wise FC answers in NCHW: the decoder gets the input's layout back (after the dropout, whose
        # random mask follows memory order, so both layouts draw the same one)
        return self.decoder(z.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else z)
