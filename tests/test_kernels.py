"""The fast layers (pretext.models.kernels) compute what the plain PyTorch layers compute, gradients included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pretext.models import kernels
from pretext.models.kernels import FastConvTranspose2d, set_fast_kernels

# (in, out, kernel, stride, padding, output_padding, bias, input size): the decoders' layers and the corners.
LAYERS = [
    (6, 5, 3, 2, 0, 0, True, 7),  # odd kernel, stride 2 (the context encoder's 56 -> 113)
    (6, 5, 4, 2, 1, 0, False, 8),  # DCGAN's up-convolution
    (4, 3, 3, 1, 1, 0, True, 5),  # size-preserving
    (4, 3, 3, 2, 1, 1, True, 6),  # output_padding
    (3, 4, 5, 3, 2, 2, True, 4),  # stride 3, output_padding 2
]


def _run(layer: nn.Module, x: torch.Tensor, fast: bool, autocast: bool = False) -> tuple[torch.Tensor, ...]:
    layer.fast = fast
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(xi)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y.float() * weights).sum().backward()
    grads = [xi.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return (y.detach(), *grads)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("spec", LAYERS)
def test_fast_transposed_convolution_equals_the_plain_one(spec: tuple, channels_last: bool) -> None:
    cin, cout, k, s, p, op, bias, size = spec
    torch.manual_seed(0)
    layer = FastConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, bias=bias)
    x = torch.randn(3, cin, size, size)
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    plain, fast = _run(layer, x, False), _run(layer, x, True)
    assert fast[0].shape == plain[0].shape
    if channels_last:
        assert fast[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain, fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", LAYERS[:2])
def test_fast_transposed_convolution_under_bf16_autocast(spec: tuple) -> None:
    cin, cout, k, s, p, op, bias, size = spec
    torch.manual_seed(0)
    layer = FastConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, bias=bias)
    x = torch.randn(3, cin, size, size)
    plain, fast = _run(layer, x, False, autocast=True), _run(layer, x, True, autocast=True)
    assert fast[0].dtype == plain[0].dtype == torch.bfloat16  # autocast's dtype, as the plain layer's
    assert fast[1].dtype == torch.float32 and fast[2].dtype == torch.float32  # gradients in the leaves' dtype
    for a, b in zip(plain, fast):
        torch.testing.assert_close(b.float(), a.float(), rtol=3e-2, atol=3e-2)


def test_fast_path_is_taken_and_unsupported_layers_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = kernels._TransposedAsBackward.apply
    monkeypatch.setattr(kernels._TransposedAsBackward, "apply", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    FastConvTranspose2d(4, 3, 3, stride=2)(x)
    assert len(calls) == 1
    for layer, kwargs in ((FastConvTranspose2d(4, 4, 3, stride=2, groups=2), {}),
                          (FastConvTranspose2d(4, 3, 3, stride=2, dilation=2), {}),
                          (FastConvTranspose2d(4, 3, 3, stride=2), {"output_size": [12, 12]})):
        plain = nn.ConvTranspose2d(4, layer.out_channels, 3, stride=2, groups=layer.groups, dilation=layer.dilation)
        plain.load_state_dict(layer.state_dict())  # the same parameters under the same names
        torch.testing.assert_close(layer(x, **kwargs), plain(x, **kwargs))
    assert len(calls) == 1


def test_set_fast_kernels_switches_every_layer_of_a_decoder() -> None:
    from pretext.models.context_encoder import UpconvDecoder

    decoder = UpconvDecoder(8, 2, 32)
    layers = [m for m in decoder.modules() if isinstance(m, FastConvTranspose2d)]
    assert len(layers) == 5 and all(m.fast for m in layers)
    x = torch.randn(2, 8, 2, 2)
    fast = decoder(x)
    set_fast_kernels(decoder, False)
    assert not any(m.fast for m in layers)
    torch.testing.assert_close(decoder(x), fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reconstruction_loss_gradient_equals_autograd_of_the_formula(kind: str, channels_last: bool) -> None:
    from pretext.losses import reconstruction_loss

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 9, 9, generator=g)
    target = torch.randn(2, 3, 9, 9, generator=g)
    weights = (torch.rand(2, 1, 9, 9, generator=g) > 0.5).float() * 10 + (torch.rand(2, 1, 9, 9, generator=g) > 0.7)
    if channels_last:
        pred, target = (t.contiguous(memory_format=torch.channels_last) for t in (pred, target))
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    ta, tb = target.clone().requires_grad_(True), target.clone().requires_grad_(True)
    loss = reconstruction_loss(a, ta, weights, kind)
    diff = b - tb
    err = diff.square() if kind == "l2" else diff.abs()
    reference = (err * weights).sum() / ((weights > 0).sum() * 3)
    torch.testing.assert_close(loss, reference)
    (loss * 1.7).backward()
    (reference * 1.7).backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(ta.grad, tb.grad)
    if channels_last:
        assert a.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_input_kernels_are_used_in_place(channels_last: bool) -> None:
    """The bottleneck's kernel (131 MB in the paper's GAN) is read as a matrix without a copy in either layout."""
    weight = torch.randn(8, 6, 4, 4)
    if channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    matrix, order_hwc = kernels._matrix(weight)
    assert matrix.data_ptr() == weight.data_ptr() and matrix.shape == (8, 96) and order_hwc == channels_last


def test_channels_last_on_cpu_keeps_parameters_contiguous_and_the_layout_flows_through() -> None:
    """On CPU `to_channels_last` leaves the parameters contiguous (the inputs carry the layout); both decoders hand
    the input's channels_last layout to their up-convolutions and compute what NCHW computes."""
    from pretext.models.context_encoder import ContextEncoderNet
    from pretext.models.dcgan import DCGANGenerator
    from pretext.models.alexnet import AlexNetEncoder
    from pretext.models.kernels import to_channels_last

    torch.manual_seed(0)
    encoder = AlexNetEncoder(widths=(8, 16, 16, 16, 8), input_size=64, small=True)
    c, n, _ = encoder.feature_shapes()["pool5"]
    nets = [(ContextEncoderNet(encoder, c, n, 64, (8, 8, 8, 8), dropout=0.0), 64),
            (DCGANGenerator(32, [8, 8, 8], 16, "center"), 32)]
    for net, size in nets:
        net.eval()
        assert to_channels_last(net, torch.device("cpu")) is net
        assert all(p.is_contiguous() for p in net.parameters())
        x = torch.randn(2, 3, size, size)
        seen = []
        for m in net.modules():
            if isinstance(m, FastConvTranspose2d) and m.stride != (1, 1):
                m.register_forward_pre_hook(lambda _m, args: seen.append(kernels.is_channels_last(args[0])))
        with torch.no_grad():
            plain = net(x)
            seen.clear()
            fast = net(x.contiguous(memory_format=torch.channels_last))
        assert seen and all(seen), type(net).__name__
        assert kernels.is_channels_last(fast)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
