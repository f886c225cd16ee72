"""Layers that compute what a plain PyTorch layer computes, on a faster CPU path, with the plain layer's weights,
state dict and results. `set_fast_kernels(module, False)` switches every one of them back to the plain layer (the
speed benchmark's reference, `train.fast_kernels=false`).

- WholeInputConv2d / WholeInputConvTranspose2d: a convolution whose kernel covers its whole input (or a transposed
  one of a 1x1 input) is a fully connected layer; one matrix product, where oneDNN's convolution kernels are ~5-10x
  slower on CPU for these shapes.
- FastConvTranspose2d: a transposed convolution is the input gradient of the convolution with the same weight, so it
  runs as that convolution's backward-data kernel (and its backward as a forward convolution plus a weight
  gradient), which oneDNN runs faster than its transposed-convolution path on CPU (`cebench bench` times both
  paths for the decoders' layers: 1.1-1.7x at batch 64 on an AVX512-BF16 CPU, results/perf_avx512/perf.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WholeInputConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input (the 4x4 -> 1x1 bottleneck, the discriminator's last
    layer): a fully connected layer, run as one matrix product while `fast` is set."""

    fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast or tuple(x.shape[-2:]) != self.kernel_size or self.padding != (0, 0) or self.groups != 1:
            return super().forward(x)
        weight, channels_last = _matrix(self.weight)
        return F.linear(_rows(x, channels_last), weight, self.bias).view(len(x), self.out_channels, 1, 1)


class WholeInputConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution of a 1x1 input (the bottleneck -> 4x4 decoder start): a fully connected layer, run
    as one matrix product while `fast` is set."""

    fast = True

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (not self.fast or output_size is not None or tuple(x.shape[-2:]) != (1, 1) or self.padding != (0, 0)
                or self.output_padding != (0, 0) or self.groups != 1):
            return super().forward(x, output_size)
        weight, channels_last = _matrix(self.weight)
        y = F.linear(x.flatten(1), weight.t())
        kh, kw = self.kernel_size
        if channels_last:  # columns in (h, w, c) order: the result is a channels_last (B, C, kh, kw) view
            y = y.view(len(x), kh, kw, self.out_channels).permute(0, 3, 1, 2)
        else:
            y = y.view(len(x), self.out_channels, kh, kw)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor is laid out channels_last (and not also contiguous, as a C = 1 or 1x1 tensor is)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _matrix(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A (out, c, h, w) kernel as a (out, c*h*w) matrix without copying it: columns in (c, h, w) order for a
    contiguous kernel, (h, w, c) for a channels_last one (flattening that one in (c, h, w) order copies the
    whole kernel every step: 131 MB for the DCGAN bottleneck). Returns (matrix, whether the order is (h, w, c))."""
    if is_channels_last(weight):
        return weight.permute(0, 2, 3, 1).flatten(1), True
    return weight.flatten(1), False


def _rows(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(B, c, h, w) -> (B, c*h*w) in the column order of `_matrix`."""
    return x.permute(0, 2, 3, 1).flatten(1) if channels_last else x.flatten(1)


class _TransposedAsBackward(torch.autograd.Function):
    """y = conv_transpose2d(x, weight) computed as the input gradient of conv2d(., weight) at grad_output x.

    Backward: dL/dx = conv2d(dL/dy, weight) (a forward convolution) and dL/dweight = the weight gradient of that
    convolution with input dL/dy and grad_output x. Inputs arrive in one dtype (the caller applies autocast).
    Differentiable once: a double backward (create_graph=True, gradient penalties) needs train.fast_kernels=false."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, out_hw: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        shape = (x.shape[0], weight.shape[1], *out_hw)
        template = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        y = torch.ops.aten.convolution_backward(x, template, weight, None, list(stride), list(padding), [1, 1],
                                                False, [0, 0], 1, [True, False, False])[0]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.fmt = stride, padding, fmt
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        with torch.autocast(grad_y.device.type, enabled=False):
            # oneDNN runs ~10x slower when the gradient's layout differs from the weight's and the input's
            grad_y = grad_y.to(x.dtype).contiguous(memory_format=ctx.fmt)
            if ctx.needs_input_grad[0]:
                grad_x = F.conv2d(grad_y, weight, None, ctx.stride, ctx.padding)
            if ctx.needs_input_grad[1]:
                grad_w = torch.ops.aten.convolution_backward(x, grad_y, weight, None, list(ctx.stride),
                                                             list(ctx.padding), [1, 1], False, [0, 0], 1,
                                                             [False, True, False])[1]
        return grad_x, grad_w, None, None, None


class FastConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d run as a convolution's backward-data kernel while `fast` is set, on CPU (cuDNN already
    computes transposed convolutions that way), for ungrouped, undilated, zero-padded layers; anything else, and
    an explicit output_size, takes the plain path. Under autocast the inputs are cast as autocast casts a
    transposed convolution's."""

    fast = True

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (not self.fast or x.device.type != "cpu" or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.padding_mode != "zeros" or x.dim() != 4):
            return super().forward(x, output_size)
        weight, bias = self.weight, self.bias
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.dtype in (torch.float16, torch.bfloat16, torch.float32):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        elif x.dtype != weight.dtype:
            raise RuntimeError(f"FastConvTranspose2d: input {x.dtype} and weight {weight.dtype} differ")
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel_size, self.stride, self.padding, self.output_padding
        out_hw = ((x.shape[2] - 1) * sh - 2 * ph + kh + oh, (x.shape[3] - 1) * sw - 2 * pw + kw + ow)
        y = _TransposedAsBackward.apply(x, weight, out_hw, self.stride, self.padding)
        return y if bias is None else y + bias.view(1, -1, 1, 1)


FAST_LAYERS = (WholeInputConv2d, WholeInputConvTranspose2d, FastConvTranspose2d)


def set_fast_kernels(module: nn.Module, enabled: bool) -> None:
    """Switch every fast layer of `module` between its fast path and the plain PyTorch layer."""
    for m in module.modules():
        if isinstance(m, FAST_LAYERS):
            m.fast = enabled


def to_channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """Prepare `module` for channels_last inputs. On CUDA its 4-d parameters become channels_last too (cuDNN picks
    NHWC kernels from the weights). On CPU they stay contiguous: the inputs carry the layout through every
    convolution (oneDNN answers a channels_last input in channels_last whatever the weight's layout), and the fused
    Adam update runs several times slower on channels_last parameters, which it copies to and from contiguous ones
    every step."""
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module
