"""The 3D U-Net of Isensee et al. 2017 (BraTS 2017), the network Chen et al. use for KiTS19.

Tensors are channels-first with spatial axes in the order (X, Y, Z): the network maps an input of
shape (N, in_channels, X, Y, Z) to logits of shape (N, num_classes, X, Y, Z). It has no final
softmax; apply one (or a loss that expects logits) outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Isensee et al. upscale by "repeating the feature voxels twice in each spatial dimension", i.e.
# nearest-neighbour upsampling. It is also cheaper than trilinear and has no parameters to tune.
_UPSAMPLE_MODE = "nearest"


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Move ``model`` to ``device`` and store its conv weights channels-last (NDHWC).

    oneDNN's 3D convolutions then run channels-last end to end instead of reordering every
    activation: on 2 cores (``benchmarks/train_speed.py``) a training step of the ``small``
    segmenter (96³, bf16) went from 2.23 s to 1.83 s and inference from 0.76 s to 0.63 s; in fp32,
    3.33 s to 2.83 s. Results are the same up to float rounding. cuDNN's 3D convolutions with
    tensor cores (bf16/fp16) prefer the same layout; on GPUs it is applied alike but not yet measured.
    Weights files are unaffected: ``save_weights`` stores contiguous tensors.
    """
    return model.to(device).to(memory_format=torch.channels_last_3d)


def _conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    """Zero-padded ("same") 3D convolution; with stride 2 it halves each even spatial size."""
    return nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


class InstanceNorm(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d(affine=True)`` that, without autograd (prediction, validation), is computed as a
    group norm with one group per channel: the same statistics (per sample and channel, over space), weights
    and eps, the same state dict.

    PyTorch's instance norm reshapes its input to channels-first, so each channels-last activation (see
    ``place``) is copied to NCDHW and the next conv copies it back; its group norm has a channels-last
    kernel and stays in bf16 under autocast. The ``paper`` networks' three passes on
    ``benchmarks/predict_speed.py``'s CT took 4.0-4.2 s instead of 6.5-7.0 s in bf16 and 8.6-11.3 s
    instead of 14.5-16.8 s in fp32 on 2 cores (two alternating runs of each version). With autograd
    (training) torch's own instance norm stays: group norm's backward is slower there (a ``small``
    segmenter step at 96³ in bf16, ``fit.train_step``, median of 6 alternating steps: 1.27 s instead
    of 0.81 s).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        if x.ndim != 5:
            raise ValueError(f"expected input of shape (N, C, X, Y, Z), got {tuple(x.shape)}")
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _norm_act(channels: int, negative_slope: float) -> list[nn.Module]:
    return [InstanceNorm(channels, affine=True), nn.LeakyReLU(negative_slope, inplace=True)]


def _conv_norm_act(in_ch: int, out_ch: int, kernel: int, negative_slope: float) -> nn.Sequential:
    """Conv -> InstanceNorm -> LeakyReLU. The conv has no bias: the norm would subtract it."""
    return nn.Sequential(_conv(in_ch, out_ch, kernel, bias=False), *_norm_act(out_ch, negative_slope))


class ContextModule(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(drop(conv(act(norm(x))))))), shape-preserving.

    Input and output: (N, channels, X, Y, Z). Dropout3d drops whole channels (spatial dropout).
    """

    def __init__(self, channels: int, dropout: float, negative_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_norm_act(channels, negative_slope),
            _conv(channels, channels, bias=False),  # only whole channels are scaled before the norm
            nn.Dropout3d(dropout),
            *_norm_act(channels, negative_slope),
            _conv(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_float(name: str, value: float, low: float, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {bound}, got {value}")


class IsenseeUNet(nn.Module):
    """3D U-Net with residual context modules and deep supervision (Isensee et al. 2017).

    Level ``i`` (0 = full resolution) has ``base_filters * 2**i`` channels and spatial size
    ``(X, Y, Z) / 2**i``. Context path: level 0 starts with a 3x3x3 conv, deeper levels with a
    stride-2 3x3x3 conv that doubles the channels; each is followed by a ContextModule. Localization
    path, for each level ``i`` from ``levels - 2`` up to 0: upsampling module (x2 nearest upscale,
    3x3x3 conv halving the channels, norm, leaky ReLU), concatenation with the context output of
    level ``i``, then a localization module (3x3x3 conv keeping the ``2 * c`` channels, 1x1x1 conv
    halving them, each followed by norm and leaky ReLU); at level 0 a single 3x3x3 conv keeping the
    ``2 * base_filters`` channels replaces the localization module, as in the paper. Deep
    supervision: 1x1x1 segmentation convs on the outputs of the ``deep_supervision`` highest
    resolution levels (``seg_layers[i]`` belongs to level ``i``); starting from the lowest, each
    is upscaled x2 and added to the next one, and the sum at level 0 is the output.

    Deviations from the paper, all deliberate:
    - the final softmax is left out: forward returns logits;
    - depth (``levels``), width and the number of supervised levels are parameters (the paper:
      5 levels, 16 base filters, 3 segmentation layers, dropout 0.3, leaky ReLU slope 1e-2);
    - the paper does not say where the norms of the upsampling and localization modules go; here
      every conv there is followed by InstanceNorm and leaky ReLU, and the skip connections carry
      the raw (pre-activation) output of the context path;
    - convs that feed straight into an InstanceNorm have no bias (it would be subtracted again).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        levels: int = 5,
        dropout: float = 0.3,
        deep_supervision: int = 3,
        negative_slope: float = 1e-2,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 1)
        _check_int("base_filters", base_filters, 1)
        _check_int("levels", levels, 2)
        _check_int("deep_supervision", deep_supervision, 1, levels - 1)
        _check_float("dropout", dropout, 0.0, 1.0)
        _check_float("negative_slope", negative_slope, 0.0)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.levels = levels
        self.divisor = 2 ** (levels - 1)
        widths = [base_filters * 2**i for i in range(levels)]
        self.widths = widths

        self.context = nn.ModuleList()
        for i, width in enumerate(widths):
            entry = _conv(in_channels, width) if i == 0 else _conv(widths[i - 1], width, stride=2)
            self.context.append(nn.Sequential(entry, ContextModule(width, dropout, negative_slope)))

        # Index i of the three lists below belongs to level i of the localization path.
        self.upsampling = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode=_UPSAMPLE_MODE),
                _conv_norm_act(2 * width, width, 3, negative_slope),
            )
            for width in widths[:-1]
        )
        self.localization = nn.ModuleList(
            self._localization(2 * width, negative_slope, top=i == 0) for i, width in enumerate(widths[:-1])
        )
        seg_in = [2 * widths[0], *widths[1:deep_supervision]]
        self.seg_layers = nn.ModuleList(_conv(ch, num_classes, kernel=1) for ch in seg_in)
        self.upscale = nn.Upsample(scale_factor=2, mode=_UPSAMPLE_MODE)

    @staticmethod
    def _localization(channels: int, negative_slope: float, top: bool) -> nn.Sequential:
        """Maps the concatenation (``channels``) to ``channels // 2``, or keeps it at the top level."""
        if top:
            return _conv_norm_act(channels, channels, 3, negative_slope)
        return nn.Sequential(
            _conv_norm_act(channels, channels, 3, negative_slope),
            _conv_norm_act(channels, channels // 2, 1, negative_slope),
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input, got dtype {x.dtype}")
        if any(size % self.divisor for size in x.shape[2:]):
            raise ValueError(
                f"spatial shape {tuple(x.shape[2:])} of input {tuple(x.shape)} is not divisible by "
                f"{self.divisor} (= 2**(levels - 1) with levels={self.levels}) in every dimension"
            )

    def forward(self, x: torch.Tensor, all_scales: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Logits (N, num_classes, X, Y, Z) for input (N, in_channels, X, Y, Z).

        With ``all_scales`` (deep supervision as a loss at each scale, as nnU-Net trains) a list
        instead: the running sum of the segmentation layers at level 0, 1, ..., i.e. logits of shape
        (N, num_classes, X / 2**i, Y / 2**i, Z / 2**i); its first element is the usual output.
        X, Y and Z must each be divisible by ``2**(levels - 1)``; ValueError otherwise.
        """
        self._check_input(x)
        skips = []
        for level in self.context:
            x = level(x)
            skips.append(x)
        scales: list[torch.Tensor] = []
        for i in reversed(range(self.levels - 1)):
            x = torch.cat([skips[i], self.upsampling[i](x)], dim=1)
            x = self.localization[i](x)
            if i < len(self.seg_layers):
                seg = self.seg_layers[i](x)
                scales.insert(0, seg if not scales else seg + self.upscale(scales[0]))
        return scales if all_scales else scales[0]
