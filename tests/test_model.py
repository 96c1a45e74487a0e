"""Tests of the Isensee 3D U-Net: shapes, widths, parameter count, validation, deep supervision."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kidneyseg.model import InstanceNorm, IsenseeUNet, count_parameters, place
from kidneyseg.weights import autocast, supported_precision


def _small(**kwargs: object) -> IsenseeUNet:
    args: dict[str, object] = {"base_filters": 4, "levels": 3}
    args.update(kwargs)
    args.setdefault("deep_supervision", min(3, int(args["levels"]) - 1))
    torch.manual_seed(0)
    return IsenseeUNet(**args)


def _input(in_channels: int = 1, size: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, in_channels, size, size, size, generator=torch.Generator().manual_seed(1))


def _expected_parameters(in_ch: int, classes: int, base: int, levels: int, supervised: int) -> int:
    """Parameter count derived from the architecture description, independently of the code."""

    def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
        return cin * cout * k**3 + (cout if bias else 0)

    def norm(c: int) -> int:
        return 2 * c  # affine InstanceNorm: weight and bias

    widths = [base * 2**i for i in range(levels)]
    total = 0
    for i, c in enumerate(widths):
        total += conv(in_ch if i == 0 else widths[i - 1], c, 3)  # entry conv
        total += 2 * norm(c) + conv(c, c, 3, bias=False) + conv(c, c, 3)  # context module
    for i, c in enumerate(widths[:-1]):
        total += conv(2 * c, c, 3, bias=False) + norm(c)  # upsampling module
        total += conv(2 * c, 2 * c, 3, bias=False) + norm(2 * c)  # 3x3x3 conv (the only one at level 0)
        if i > 0:
            total += conv(2 * c, c, 1, bias=False) + norm(c)  # 1x1x1 conv of a localization module
    seg_in = [2 * base, *widths[1:supervised]]
    return total + sum(conv(c, classes, 1) for c in seg_in)


@pytest.mark.parametrize(
    ("levels", "in_channels", "num_classes", "size"),
    [(2, 1, 2, 16), (3, 2, 3, 16), (4, 1, 1, 16), (4, 4, 3, 32)],
)
def test_output_shape_matches_input(levels: int, in_channels: int, num_classes: int, size: int) -> None:
    model = _small(levels=levels, in_channels=in_channels, num_classes=num_classes, deep_supervision=1)
    x = _input(in_channels, size, batch=2)
    out = model(x)
    assert out.shape == (2, num_classes, size, size, size)
    assert out.dtype == x.dtype


def test_non_cubic_input() -> None:
    out = _small(levels=3, num_classes=3)(torch.randn(1, 1, 8, 16, 24))
    assert out.shape == (1, 3, 8, 16, 24)


def test_paper_defaults_widths_and_parameter_count() -> None:
    model = IsenseeUNet(in_channels=1, num_classes=3)
    assert model.widths == [16, 32, 64, 128, 256]
    context_widths = [level[0].out_channels for level in model.context]
    assert context_widths == [16, 32, 64, 128, 256]
    assert [level[0].stride for level in model.context] == [(1, 1, 1)] + [(2, 2, 2)] * 4
    assert [up[1][0].out_channels for up in model.upsampling] == [16, 32, 64, 128]
    assert [seg.in_channels for seg in model.seg_layers] == [32, 32, 64]
    assert all(seg.kernel_size == (1, 1, 1) and seg.out_channels == 3 for seg in model.seg_layers)
    assert model.divisor == 16

    n = count_parameters(model)
    print(f"IsenseeUNet(in=1, classes=3, base=16, levels=5): {n} parameters")
    assert n == _expected_parameters(1, 3, 16, 5, 3)
    # Plausibility from the 3x3x3 conv weights alone, in units of 27 * 256**2: the bottom level holds
    # 2.5 (entry conv 128 * 256 plus two 256 * 256 convs); the level above 2.5 / 4 in its context
    # path and 6 * 128**2 / 256**2 = 1.5 in its upsampling (256 -> 128) and 3x3x3 localization
    # (256 -> 256) convs; each level further up costs a quarter of the one below, so the whole is
    # 2.5 + 2.125 * (1 + 1/4 + 1/16 + 1/64) ~= 5.32. 1x1x1 convs, norms and biases add under 1 %.
    unit = 27 * 256**2
    assert 5.3 * unit < n < 5.4 * unit


@pytest.mark.parametrize(("levels", "base", "supervised"), [(2, 3, 1), (3, 4, 2), (4, 2, 3)])
def test_parameter_count_matches_formula(levels: int, base: int, supervised: int) -> None:
    model = IsenseeUNet(in_channels=2, num_classes=4, base_filters=base, levels=levels, deep_supervision=supervised)
    assert count_parameters(model) == _expected_parameters(2, 4, base, levels, supervised)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 12), (1, 1, 18, 16, 16), (1, 1, 4, 4, 4)])
def test_non_divisible_spatial_size_raises(shape: tuple[int, ...]) -> None:
    model = _small(levels=4)  # divisor 8
    with pytest.raises(ValueError, match=r"divisible by 8") as info:
        model(torch.zeros(shape))
    assert str(tuple(shape[2:])) in str(info.value)


@pytest.mark.parametrize(
    "x", [torch.zeros(1, 16, 16, 16), torch.zeros(1, 2, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16).long()]
)
def test_bad_input_raises(x: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        _small()(x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 1, "deep_supervision": 1}, "levels"),
        ({"levels": 2.0}, "levels"),
        ({"base_filters": 0}, "base_filters"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"deep_supervision": 0}, "deep_supervision"),
        ({"levels": 3, "deep_supervision": 3}, "deep_supervision"),
        ({"negative_slope": -1.0}, "negative_slope"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IsenseeUNet(**kwargs)


def test_deep_supervision_layers_contribute() -> None:
    model = _small(levels=4, num_classes=2, deep_supervision=3).eval()
    assert len(model.seg_layers) == 3
    x = _input(size=16)
    with torch.no_grad():
        before = model(x)
        model.seg_layers[-1].weight.zero_()
        model.seg_layers[-1].bias.zero_()
        after = model(x)
    assert not torch.allclose(before, after)


def test_single_segmentation_layer() -> None:
    model = _small(levels=4, deep_supervision=1)
    assert len(model.seg_layers) == 1
    n_seg = sum(
        isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 1) and m.out_channels == 2 for m in model.modules()
    )
    assert n_seg == 1


@pytest.mark.parametrize("supervised", [1, 2, 3])
def test_output_is_sum_of_unnormalized_segmentation_maps(supervised: int) -> None:
    """Zero seg weights and bias 5 per layer: the upscaled sum is 5 * supervised, no softmax."""
    model = _small(levels=4, num_classes=3, deep_supervision=supervised).eval()
    with torch.no_grad():
        for seg in model.seg_layers:
            seg.weight.zero_()
            seg.bias.fill_(5.0)
        out = model(_input())
    torch.testing.assert_close(out, torch.full_like(out, 5.0 * supervised))


def test_output_is_logits() -> None:
    model = _small(num_classes=3).eval()
    with torch.no_grad():
        out = model(_input())
    outside_unit = (out < 0) | (out > 1)
    assert outside_unit.any()
    assert not torch.allclose(out.sum(dim=1), torch.ones_like(out[:, 0]))


def test_gradients_reach_first_conv() -> None:
    model = _small(levels=3)
    out = model(_input(batch=2))
    loss = nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 16, 16, 16)))
    loss.backward()
    first_conv = model.context[0][0]
    assert first_conv.weight.grad is not None
    assert torch.isfinite(first_conv.weight.grad).all()
    assert first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_eval_is_deterministic_and_train_uses_dropout() -> None:
    model = _small(levels=3, dropout=0.3)
    x = _input()
    with torch.no_grad():
        model.train()
        torch.manual_seed(2)
        train_a = model(x)
        train_b = model(x)
        model.eval()
        eval_a = model(x)
        eval_b = model(x)
    assert not torch.allclose(train_a, train_b)
    assert torch.equal(eval_a, eval_b)


def test_no_dropout_train_mode_is_deterministic() -> None:
    model = _small(levels=3, dropout=0.0).train()
    x = _input()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_equals_torch_instance_norm(channels_last: bool) -> None:
    """The group-norm form normalises each sample and channel over space, as nn.InstanceNorm3d does,
    with the same weights; a wrong group count (e.g. 1 group: layer norm) would not match."""
    torch.manual_seed(0)
    ours = InstanceNorm(6, affine=True)
    ref = nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.uniform_(-1.0, 1.0)
    ref.load_state_dict(ours.state_dict())  # the same keys: weights files stay compatible
    x = torch.randn(2, 6, 5, 6, 7) * torch.arange(1.0, 7.0)[None, :, None, None, None] + 3.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():  # the group-norm form (with autograd it is torch's own)
        out = ours(x)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x), out, rtol=1e-5, atol=1e-5)
    # each (sample, channel) normalised: mean = bias, std = weight
    torch.testing.assert_close(out.mean(dim=(2, 3, 4)), ours.bias.detach().expand(2, 6), rtol=0, atol=1e-4)


def test_network_keeps_channels_last_bf16_activations() -> None:
    """In prediction every norm returns its channels-last input channels-last, in the precision prediction
    runs on this CPU (bf16 where native, else fp32), where torch's instance norm returns channels-first tensors
    that the next conv copies back. Where the convolutions themselves return channels-last tensors (oneDNN on
    CPUs with native bf16; AVX2-only CPUs return channels-first ones), every norm of a channels-last network
    gets and returns them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning
        precision = supported_precision("bf16", "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    norm = InstanceNorm(6, affine=True).eval()
    x = torch.randn(2, 6, 5, 6, 7).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), autocast(precision, "cpu"):
        out = norm(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        assert not nn.InstanceNorm3d(6, affine=True).eval()(x).is_contiguous(memory_format=torch.channels_last_3d)
    model = place(_small(levels=3), "cpu").eval()
    seen = []
    for module in model.modules():
        if isinstance(module, InstanceNorm):
            module.register_forward_hook(lambda m, inp, out: seen.append(
                (inp[0].dtype, out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last_3d),
                 out.is_contiguous(memory_format=torch.channels_last_3d))))
    with torch.inference_mode(), autocast(precision, "cpu"):
        model(_input().contiguous(memory_format=torch.channels_last_3d))
    assert seen and all(d_in == d_out == dtype and cl_in == cl_out for d_in, d_out, cl_in, cl_out in seen)
