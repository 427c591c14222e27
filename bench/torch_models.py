"""The benchmark's architectures in PyTorch, layer for layer as imgcls and Keras build them.

torchvision does not import beside the CPU build of torch this project pins, so the few
backbones are written here: Keras's MobileNetV2 (up to a block), VGG19 and InceptionV3, and the
tutorials' CNNs. Padding follows Keras where it changes shapes ('valid' vs 'same'); Keras's
asymmetric 'same' padding of strided layers is torch's symmetric one here, which gives the same
output sizes and work.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
  return [
    nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
    nn.BatchNorm2d(cout, eps=1e-3),
    nn.ReLU6(),
  ]


class InvertedResidual(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, expansion: int):
    super().__init__()
    hidden = cin * expansion
    layers = _conv_bn_relu6(cin, hidden) if expansion != 1 else []
    layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
    layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3)]
    self.body = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    y = self.body(x)
    return x + y if self.residual else y


def mobilenet_v2_to_block_6_expand_relu() -> nn.Module:
  """Keras's MobileNetV2 (alpha 1) up to `block_6_expand_relu` (the pollen tutorial's cut)."""
  layers = _conv_bn_relu6(3, 32, 3, 2)
  cin = 32
  for cout, stride, expansion in ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6)):
    layers.append(InvertedResidual(cin, cout, stride, expansion))
    cin = cout
  layers += _conv_bn_relu6(cin, cin * 6)  # block_6_expand, its BN and ReLU6
  return nn.Sequential(*layers)


def vgg19_features() -> nn.Module:
  """Keras's VGG19 without its top, max-pooled to a 512-vector."""
  layers, cin = [], 3
  for convs, width in ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)):
    for _ in range(convs):
      layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
      cin = width
    layers.append(nn.MaxPool2d(2))
  return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())


class ConvBN(nn.Sequential):
  """Keras's InceptionV3 `conv2d_bn`: a convolution without bias, BatchNorm without scale, ReLU."""

  def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding: str = "same"):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (kernel[0] // 2, kernel[1] // 2) if padding == "same" else 0
    super().__init__(nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU())


class Branches(nn.Module):
  """Branches applied to the same input, concatenated along channels."""

  def __init__(self, *branches: nn.Module):
    super().__init__()
    self.branches = nn.ModuleList(branches)

  def forward(self, x):
    return torch.cat([b(x) for b in self.branches], dim=1)


def _avg_pool_conv(cin: int, cout: int) -> nn.Module:
  return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), ConvBN(cin, cout, 1))


def _block_35(cin: int, pool: int) -> nn.Module:
  return Branches(
    ConvBN(cin, 64, 1),
    nn.Sequential(ConvBN(cin, 48, 1), ConvBN(48, 64, 5)),
    nn.Sequential(ConvBN(cin, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3)),
    _avg_pool_conv(cin, pool),
  )


def _block_17(c: int) -> nn.Module:
  return Branches(
    ConvBN(768, 192, 1),
    nn.Sequential(ConvBN(768, c, 1), ConvBN(c, c, (1, 7)), ConvBN(c, 192, (7, 1))),
    nn.Sequential(ConvBN(768, c, 1), ConvBN(c, c, (7, 1)), ConvBN(c, c, (1, 7)), ConvBN(c, c, (7, 1)), ConvBN(c, 192, (1, 7))),
    _avg_pool_conv(768, 192),
  )


def _block_8(cin: int) -> nn.Module:
  split = lambda c: Branches(ConvBN(c, 384, (1, 3)), ConvBN(c, 384, (3, 1)))  # noqa: E731
  return Branches(
    ConvBN(cin, 320, 1),
    nn.Sequential(ConvBN(cin, 384, 1), split(384)),
    nn.Sequential(ConvBN(cin, 448, 1), ConvBN(448, 384, 3), split(384)),
    _avg_pool_conv(cin, 192),
  )


def inception_v3_features() -> nn.Module:
  """Keras's InceptionV3 without its top, average-pooled to a 2048-vector."""
  return nn.Sequential(
    ConvBN(3, 32, 3, 2, "valid"),
    ConvBN(32, 32, 3, padding="valid"),
    ConvBN(32, 64, 3),
    nn.MaxPool2d(3, 2),
    ConvBN(64, 80, 1, padding="valid"),
    ConvBN(80, 192, 3, padding="valid"),
    nn.MaxPool2d(3, 2),
    _block_35(192, 32),
    _block_35(256, 64),
    _block_35(288, 64),
    Branches(
      ConvBN(288, 384, 3, 2, "valid"),
      nn.Sequential(ConvBN(288, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3, 2, "valid")),
      nn.MaxPool2d(3, 2),
    ),
    _block_17(128),
    _block_17(160),
    _block_17(160),
    _block_17(192),
    Branches(
      nn.Sequential(ConvBN(768, 192, 1), ConvBN(192, 320, 3, 2, "valid")),
      nn.Sequential(ConvBN(768, 192, 1), ConvBN(192, 192, (1, 7)), ConvBN(192, 192, (7, 1)), ConvBN(192, 192, 3, 2, "valid")),
      nn.MaxPool2d(3, 2),
    ),
    _block_8(1280),
    _block_8(2048),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
  )


def _flat_size(features: nn.Module, image_size: tuple[int, int]) -> int:
  with torch.no_grad():
    return features(torch.zeros(1, 3, *image_size)).flatten(1).shape[1]


def model(case: str, num_classes: int, image_size: tuple[int, int]) -> tuple[nn.Module, nn.Module, bool]:
  """(backbone, head, whether the backbone is frozen) for a benchmark case."""
  relu, pool = nn.ReLU, lambda: nn.MaxPool2d(2)  # noqa: E731
  frozen = False
  if case.startswith("pollen"):
    features = mobilenet_v2_to_block_6_expand_relu()
    head = [nn.Flatten(), nn.Linear(_flat_size(features, image_size), 64), relu(), nn.Linear(64, 1)]
  elif case == "insects":
    features = nn.Sequential(
      nn.Conv2d(3, 16, 3, padding=1),
      relu(),
      pool(),
      nn.Conv2d(16, 32, 3, padding=1),
      relu(),
      pool(),
      nn.Conv2d(32, 64, 3, padding=1),
      relu(),
      pool(),
    )
    head = [nn.Flatten(), nn.Linear(_flat_size(features, image_size), 128), relu(), nn.Linear(128, num_classes)]
  elif case == "bn_cnn":
    bn = lambda: nn.BatchNorm2d(32, eps=1e-5, momentum=0.9)  # noqa: E731  (Keras's momentum 0.1)
    features = nn.Sequential(
      nn.Conv2d(3, 32, 7, 2),
      relu(),
      bn(),
      pool(),
      nn.Conv2d(32, 32, 3),
      relu(),
      bn(),
      pool(),
      nn.Conv2d(32, 32, 3),
      relu(),
      bn(),
      pool(),
    )
    width = image_size[1]
    head = [
      nn.Dropout(0.3),
      nn.Flatten(),
      nn.Linear(_flat_size(features, image_size), width),
      relu(),
      nn.BatchNorm1d(width, eps=1e-5, momentum=0.9),
      nn.Linear(width, num_classes),
    ]
  elif case == "dropout_cnn":
    features = nn.Sequential(
      nn.Conv2d(3, 32, 3),
      relu(),
      nn.Conv2d(32, 64, 3),
      relu(),
      pool(),
      nn.Dropout(0.25),
      nn.Conv2d(64, 64, 3),
      relu(),
      pool(),
      nn.Dropout(0.25),
    )
    head = [nn.Flatten(), nn.Linear(_flat_size(features, image_size), 64), relu(), nn.Dropout(0.5), nn.Linear(64, num_classes)]
  elif case.startswith("flowers_vgg19"):
    features, frozen = vgg19_features(), True
    head = [nn.Linear(512, 128), relu(), nn.Dropout(0.3), nn.Linear(128, num_classes)]
  elif case == "inception_v3":
    features = inception_v3_features()
    head = [nn.Linear(2048, 1024), relu(), nn.Linear(1024, num_classes)]
  else:
    raise ValueError(f"No PyTorch model for case {case!r}.")
  return features, nn.Sequential(*head), frozen
