"""Tests for pretext.models: the AlexNet encoder, the context-encoder network and the DCGAN networks."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pretext.models import ENCODER_ARCHS, alexnet_spec, build_encoder
from pretext.models.alexnet import (
    PAPER_WIDTHS,
    STAGES,
    TORCHVISION_WIDTHS,
    AlexNetEncoder,
    AlexNetSpec,
)
from pretext.models.context_encoder import ChannelWiseFC, ContextEncoderNet, UpconvDecoder, upconv_plan
from pretext.models.dcgan import DCGANDiscriminator, DCGANEncoder, DCGANGenerator

SMALL_WIDTHS = (8, 16, 16, 16, 16)
PAPER_SHAPES_227 = {
    "conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27), "pool2": (256, 13, 13),
    "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
}


@pytest.fixture(scope="module")
def paper_encoder() -> AlexNetEncoder:
    torch.manual_seed(0)
    return AlexNetEncoder().eval()


@pytest.fixture(scope="module")
def image227() -> torch.Tensor:
    return torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(1))


# --- AlexNet encoder -----------------------------------------------------------------------------

def test_default_spec_is_the_paper_caffe_alexnet(paper_encoder: AlexNetEncoder) -> None:
    assert paper_encoder.spec.widths == PAPER_WIDTHS == (96, 256, 384, 384, 256)
    assert paper_encoder.spec.layout == "caffe" and paper_encoder.spec.input_size == 227
    assert paper_encoder.out_channels == 256


def test_paper_stage_shapes_at_227(paper_encoder: AlexNetEncoder, image227: torch.Tensor) -> None:
    with torch.no_grad():
        feats = paper_encoder(image227, out=STAGES)
    assert list(feats) == list(STAGES)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (1, *s) for k, s in PAPER_SHAPES_227.items()}
    assert paper_encoder.feature_shapes() == PAPER_SHAPES_227


def test_single_stage_string_returns_the_dict_entry(paper_encoder: AlexNetEncoder, image227: torch.Tensor) -> None:
    with torch.no_grad():
        pool5 = paper_encoder(image227, out="pool5")
        default = paper_encoder(image227)
        feats = paper_encoder(image227, out=("conv3", "pool5"))
    assert isinstance(pool5, torch.Tensor) and pool5.shape == (1, 256, 6, 6)
    assert torch.equal(pool5, feats["pool5"])
    assert torch.equal(default, pool5)
    assert set(feats) == {"conv3", "pool5"}


@pytest.mark.parametrize("out", ["fc6", ("conv1", "conv6"), ("Pool5",)])
def test_unknown_stage_is_a_value_error(paper_encoder: AlexNetEncoder, out) -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        paper_encoder(torch.zeros(1, 3, 227, 227), out=out)


def test_intermediate_stages_survive_later_inplace_relus(image227: torch.Tensor) -> None:
    torch.manual_seed(0)
    enc = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS)).eval()  # same layers as the paper's, narrower
    with torch.no_grad():
        together = enc(image227, out=STAGES)
        for name in STAGES:
            alone = enc(image227, out=(name,))[name]
            assert torch.equal(alone, together[name]), name
    # ReLU stages are non-negative and a later stage did not zero them out
    assert together["conv1"].min() >= 0 and together["conv1"].max() > 0


def test_stage_outputs_are_post_relu_conv_outputs() -> None:
    torch.manual_seed(0)
    enc = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS, small=True, input_size=32)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        conv1 = enc(x, out="conv1")
        expected = torch.relu(enc.features[0](x))
    assert torch.equal(conv1, expected)


def _copy_to_torchvision(enc: AlexNetEncoder) -> nn.Module:
    # Built on the meta device so the unused 58M-parameter classifier costs nothing; only features is materialised.
    with torch.device("meta"):
        tv = torchvision.models.alexnet(weights=None).eval()
    tv.features.to_empty(device="cpu")
    tv.features.load_state_dict(enc.features.state_dict(), strict=True)
    return tv


def test_torchvision_round_trip_weights_and_outputs() -> None:
    torch.manual_seed(0)
    enc = AlexNetEncoder(AlexNetSpec(widths=TORCHVISION_WIDTHS, layout="torchvision")).eval()
    tv = _copy_to_torchvision(enc)
    assert list(enc.features.state_dict()) == list(tv.features.state_dict())
    for size in (224, 227):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            ours, theirs = enc(x), tv.features(x)
        assert ours.shape == theirs.shape == (1, 256, 6, 6)
        assert torch.equal(ours, theirs), size
    # and back: torchvision weights load strictly into a fresh encoder with the same output
    fresh = AlexNetEncoder(AlexNetSpec(widths=TORCHVISION_WIDTHS, layout="torchvision")).eval()
    fresh.features.load_state_dict(tv.features.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(fresh(x), tv.features(x))


def test_caffe_layout_differs_from_torchvision_only_in_conv1_padding() -> None:
    caffe = AlexNetEncoder(AlexNetSpec(widths=TORCHVISION_WIDTHS, layout="caffe"))
    tv = AlexNetEncoder(AlexNetSpec(widths=TORCHVISION_WIDTHS, layout="torchvision"))
    assert caffe.features[0].padding == (0, 0) and tv.features[0].padding == (2, 2)
    assert {k: v.shape for k, v in caffe.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}


@pytest.mark.parametrize("lrn,groups", [(True, False), (False, True), (True, True)])
def test_lrn_and_groups_keep_parameter_names(lrn: bool, groups: bool) -> None:
    plain = AlexNetEncoder(AlexNetSpec())
    other = AlexNetEncoder(AlexNetSpec(lrn=lrn, groups=groups))
    assert list(other.state_dict()) == list(plain.state_dict())
    assert list(plain.state_dict()) == [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]


def test_groups_halve_in_channels_of_conv2_conv4_conv5() -> None:
    plain = AlexNetEncoder(AlexNetSpec()).features
    grouped = AlexNetEncoder(AlexNetSpec(groups=True)).features
    w1, w2, w3, w4, w5 = PAPER_WIDTHS
    expected_in = {0: (3, 3), 3: (w1, w1 // 2), 6: (w2, w2), 8: (w3, w3 // 2), 10: (w4, w4 // 2)}
    for i, (plain_in, grouped_in) in expected_in.items():
        assert plain[i].weight.shape[1] == plain_in, i
        assert grouped[i].weight.shape[1] == grouped_in, i
        assert grouped[i].weight.shape[0] == plain[i].weight.shape[0], i


def test_lrn_changes_conv1_values_not_shape(image227: torch.Tensor) -> None:
    torch.manual_seed(0)
    plain = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS)).eval()
    lrn = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS, lrn=True)).eval()
    lrn.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        a, b = plain(image227[:1], out="conv1"), lrn(image227[:1], out="conv1")
    assert a.shape == b.shape
    assert not torch.equal(a, b)


@pytest.mark.parametrize("size", [32, 64, 96, 128])
def test_small_variant_pool5_is_4x4(size: int) -> None:
    enc = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS, small=True, input_size=size))
    shapes = enc.feature_shapes()
    # conv1 at stride input/32 brings every size to the same 32 px path: 32 -> 16 -> 8 -> 4
    assert shapes["conv1"] == (8, 32, 32)
    assert shapes["pool1"] == (8, 16, 16)
    assert shapes["pool2"] == (16, 8, 8)
    assert shapes["conv5"] == (16, 8, 8)
    assert shapes["pool5"] == (16, 4, 4)
    with torch.no_grad():
        assert enc(torch.zeros(2, 3, size, size)).shape == (2, 16, 4, 4)


@pytest.mark.parametrize("kwargs", [
    {"small": True, "input_size": 48},
    {"small": True, "input_size": 16},
    {"input_size": 128},
    {"input_size": 194},
    {"groups": True, "widths": (96, 255, 384, 384, 256)},
    {"groups": True, "widths": (96, 256, 384, 384, 255)},
    {"widths": (96, 256, 384, 384)},
    {"widths": (96, 256, 384, 384, 256, 256)},
    {"widths": (96, 0, 384, 384, 256)},
    {"layout": "keras"},
])
def test_invalid_specs_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AlexNetSpec(**kwargs)


def test_groups_with_odd_conv1_width_is_rejected_by_the_spec() -> None:
    with pytest.raises(ValueError, match="groups"):
        AlexNetSpec(widths=(95, 256, 384, 384, 256), groups=True)


def test_spec_dict_round_trip() -> None:
    spec = AlexNetSpec(widths=(8, 16, 24, 24, 16), input_size=64, small=True, lrn=True, groups=True, layout="torchvision")
    d = spec.to_dict()
    assert d == {"widths": [8, 16, 24, 24, 16], "input_size": 64, "small": True, "lrn": True, "groups": True,
                 "layout": "torchvision"}
    assert AlexNetSpec.from_dict(d) == spec
    assert AlexNetSpec.from_dict({}) == AlexNetSpec()


def test_spec_from_dict_unknown_key() -> None:
    with pytest.raises(ValueError, match="bogus"):
        AlexNetSpec.from_dict({"widths": list(PAPER_WIDTHS), "bogus": 1})


def test_alexnet_spec_helper() -> None:
    assert alexnet_spec("alexnet_small", None, 64) == AlexNetSpec(input_size=64, small=True)
    assert alexnet_spec("alexnet", [1, 2, 3, 4, 5], 227, layout="torchvision") == AlexNetSpec(
        widths=(1, 2, 3, 4, 5), layout="torchvision")


# --- channel-wise fully-connected layer ----------------------------------------------------------

def test_channelwise_fc_parameter_count() -> None:
    fc = ChannelWiseFC(256, 6)
    assert fc.weight.numel() == 331_776  # m * n^4 = 256 * 6^4
    assert fc.bias.numel() == 256 * 36
    net = ContextEncoderNet(AlexNetEncoder(), 256, 6, 227)
    cwfc = [m for m in net.bottleneck if isinstance(m, ChannelWiseFC)]
    assert len(cwfc) == 1 and cwfc[0].weight.numel() == 331_776


def test_channelwise_fc_matches_a_per_channel_loop() -> None:
    fc = ChannelWiseFC(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.arange(32, dtype=torch.float32).reshape(2, 4, 4) / 10)
        fc.bias.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, -1.0], [2.0, 0.0]]],
                      [[[0.0, 1.0], [0.0, 1.0]], [[-3.0, 1.0], [1.0, 1.0]]]])
    expected = torch.zeros(2, 2, 4)
    for b in range(2):
        for c in range(2):
            v = x[b, c].reshape(4)
            for j in range(4):
                expected[b, c, j] = sum(v[i] * fc.weight[c, i, j] for i in range(4)) + fc.bias[c, j]
    with torch.no_grad():
        y = fc(x)
    assert y.shape == (2, 2, 2, 2)
    torch.testing.assert_close(y, expected.reshape(2, 2, 2, 2))
    # one entry by hand: b=0, c=0, j=0 -> (1*0 + 2*0.4 + 3*0.8 + 4*1.2) + 1 = 9.0
    assert y[0, 0, 0, 0].item() == pytest.approx(9.0)


def test_channelwise_fc_does_not_mix_channels() -> None:
    torch.manual_seed(0)
    fc = ChannelWiseFC(3, 4)
    x = torch.randn(2, 3, 4, 4)
    x2 = x.clone()
    x2[:, 0] += torch.randn(2, 4, 4)
    with torch.no_grad():
        y, y2 = fc(x), fc(x2)
    assert torch.equal(y[:, 1:], y2[:, 1:])
    assert not torch.allclose(y[:, 0], y2[:, 0])


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 2, 3, 3), (1, 2, 2, 3)])
def test_channelwise_fc_wrong_shape(shape: tuple) -> None:
    with pytest.raises(ValueError, match="ChannelWiseFC expects"):
        ChannelWiseFC(2, 2)(torch.zeros(shape))


# --- up-convolution decoder ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 4, 6])
@pytest.mark.parametrize("target", [16, 31, 32, 63, 64, 113, 127, 128, 227])
def test_upconv_decoder_hits_target_exactly(n: int, target: int) -> None:
    plan = upconv_plan(n, target)
    assert len(plan) == 5
    assert plan[0][0] == n and plan[-1][1] == target
    assert all(a[1] == b[0] for a, b in zip(plan[:-1], plan[1:]))
    for a, b, k, s, p in plan:  # each step's transposed-conv arithmetic gives its declared size
        assert (a - 1) * s - 2 * p + k == b
    dec = UpconvDecoder(4, n, target, widths=(4, 4, 4, 4))
    with torch.no_grad():
        y = dec(torch.zeros(1, 4, n, n))
    assert y.shape == (1, 3, target, target)


def test_upconv_plan_for_paper_alexnet() -> None:
    plan = upconv_plan(6, 227)
    assert [a for a, *_ in plan] + [plan[-1][1]] == [6, 13, 27, 56, 113, 227]
    assert all(s == 2 for _, _, _, s, _ in plan)


def test_upconv_plan_rejects_downsampling() -> None:
    with pytest.raises(ValueError):
        upconv_plan(8, 4)
    with pytest.raises(ValueError):
        upconv_plan(4, 16, layers=0)


# --- context encoder network ---------------------------------------------------------------------

def test_context_encoder_net_paper_alexnet_full_image(image227: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = ContextEncoderNet(AlexNetEncoder(), 256, 6, 227).eval()
    with torch.no_grad():
        y = net(image227)
    assert y.shape == (1, 3, 227, 227)


@pytest.mark.parametrize("out_size", [64, 32])
def test_context_encoder_net_small_alexnet(out_size: int) -> None:
    torch.manual_seed(0)
    enc = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS, small=True, input_size=64))
    net = ContextEncoderNet(enc, 16, 4, out_size, decoder_widths=(8, 8, 8, 8), decoder_norm="batch").eval()
    with torch.no_grad():
        y = net(torch.randn(3, 3, 64, 64))
    assert y.shape == (3, 3, out_size, out_size)


def test_context_encoder_net_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    enc = AlexNetEncoder(AlexNetSpec(widths=SMALL_WIDTHS, small=True, input_size=32))
    net = ContextEncoderNet(enc, 16, 4, 32, decoder_widths=(8, 8, 8, 8), dropout=0.0)
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert enc.features[0].weight.grad is not None and enc.features[0].weight.grad.abs().sum() > 0


# --- DCGAN networks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper_generator() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(128).eval()


def test_dcgan_generator_output_sizes(paper_generator: DCGANGenerator) -> None:
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 3
    # The bottleneck width does not change any size; a narrow one keeps the full-image variant cheap.
    full_gen = DCGANGenerator(128, bottleneck=64, output="full").eval()
    with torch.no_grad():
        center = paper_generator(x)
        full = full_gen(x)
    assert center.shape == (2, 3, 64, 64) and paper_generator.out_size == 64
    assert full.shape == (2, 3, 128, 128) and full_gen.out_size == 128
    for y in (center, full):
        assert y.min() >= -1 and y.max() <= 1
        assert y.std() > 0


def test_dcgan_bottleneck_has_4000_channels(paper_generator: DCGANGenerator) -> None:
    enc = paper_generator.encoder
    assert enc.out_channels == 4000
    with torch.no_grad():
        assert enc(torch.zeros(2, 3, 128, 128)).shape == (2, 4000, 1, 1)
        assert enc(torch.zeros(2, 3, 128, 128), out="conv").shape == (2, 512, 4, 4)
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 3, 128, 128), out="pool5")


@pytest.mark.parametrize("size", [64, 128])
def test_dcgan_discriminator_one_logit_per_image(size: int) -> None:
    torch.manual_seed(0)
    disc = DCGANDiscriminator(size).eval()
    with torch.no_grad():
        assert disc(torch.randn(3, 3, size, size)).shape == (3,)


def test_small_dcgan_pair_matches_demo_sizes() -> None:
    gen = DCGANGenerator(64, widths=(8, 8, 16, 16), bottleneck=32, output="center").eval()
    disc = DCGANDiscriminator(32, widths=(8, 16, 16)).eval()
    with torch.no_grad():
        y = gen(torch.randn(2, 3, 64, 64))
        assert y.shape == (2, 3, 32, 32)
        assert disc(y).shape == (2,)


@pytest.mark.parametrize("make", [
    lambda: DCGANEncoder(input_size=48),
    lambda: DCGANEncoder(input_size=100),
    lambda: DCGANEncoder(input_size=16, widths=(8, 8)),
    lambda: DCGANEncoder(input_size=128, widths=(8, 8, 8, 8)),
    lambda: DCGANGenerator(input_size=96),
    lambda: DCGANGenerator(output="side"),
    lambda: DCGANDiscriminator(input_size=48),
    lambda: DCGANDiscriminator(input_size=8),
])
def test_dcgan_bad_sizes_raise_value_error(make) -> None:
    with pytest.raises(ValueError):
        make()


# --- builders ------------------------------------------------------------------------------------

def test_build_encoder_alexnet() -> None:
    spec = AlexNetSpec(widths=SMALL_WIDTHS, small=True, input_size=32)
    enc = build_encoder("alexnet", spec.to_dict())
    assert isinstance(enc, AlexNetEncoder) and enc.spec == spec
    assert enc.feature_shapes()["pool5"] == (16, 4, 4)


def test_build_encoder_dcgan() -> None:
    enc = build_encoder("dcgan", {"input_size": 32, "widths": [8, 16, 16], "bottleneck": 24})
    assert isinstance(enc, DCGANEncoder) and enc.out_channels == 24 and enc.input_size == 32
    with torch.no_grad():
        assert enc.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 24, 1, 1)


def test_build_encoder_unknown() -> None:
    assert ENCODER_ARCHS == ("alexnet", "dcgan", "gated", "backbone")
    with pytest.raises(ValueError, match="unknown encoder architecture 'resnet50'"):
        build_encoder("resnet50", {})
    with pytest.raises(ValueError, match="unknown AlexNet spec keys"):
        build_encoder("alexnet", {"depth": 5})
