"""The UA-MT VNet training step in PyTorch, for `jaxseg.bench --against_torch`.

Written for the benchmark, not imported by the jaxseg package (torch is optional). It is the step of
yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py on code/networks/vnet.py `VNet`
(module names as upstream, so its `state_dict` imports with `jaxseg.models.torch_import`):

  * student forward on the batch [L1, L2, U1, U2]; 0.5 (CE + Dice on the foreground softmax) on the
    labeled half;
  * teacher (EMA model, train mode) on U + clamp(0.1 N, +-0.2), no gradient;
  * T = 8 MC predictions from T / 2 teacher forwards of [U1, U2, U1, U2] with fresh noise,
    entropy of the mean softmax;
  * masked softmax-MSE consistency sum(mask d) / (2 sum(mask) + 1e-16), weight
    0.1 sigmoid_rampup(step // 150, 40), threshold (0.75 + 0.25 sigmoid_rampup(step, 6000)) ln 2;
  * SGD (lr 0.01, momentum 0.9, weight decay 1e-4), then the EMA update (alpha min(1 - 1/(step + 1),
    0.99)).

Shapes: images [B, 1, D, H, W] float32, labels [B, D, H, W] int64 (channels-first, as torch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
  """`n_stages` x [Conv3d 3x3x3 pad 1 -> BatchNorm3d -> ReLU] (upstream `ConvBlock`)."""

  def __init__(self, n_stages: int, cin: int, cout: int):
    super().__init__()
    ops = []
    for k in range(n_stages):
      ops += [
        nn.Conv3d(cin if k == 0 else cout, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
      ]
    self.conv = nn.Sequential(*ops)

  def forward(self, x):
    return self.conv(x)


class Resample(nn.Module):
  """k2 s2 Conv3d (down) or ConvTranspose3d (up) -> BatchNorm3d -> ReLU (upstream
  `DownsamplingConvBlock` / `UpsamplingDeconvBlock`)."""

  def __init__(self, cin: int, cout: int, up: bool):
    super().__init__()
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    self.conv = nn.Sequential(
      conv(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)
    )

  def forward(self, x):
    return self.conv(x)


class VNet(nn.Module):
  """yulequan/UA-MT code/networks/vnet.py `VNet(normalization='batchnorm', has_dropout=True)`:
  [B, 1, D, H, W] -> logits [B, n_classes, D, H, W], D, H, W divisible by 16."""

  def __init__(self, n_filters: int = 16, n_classes: int = 2):
    super().__init__()
    f = n_filters
    self.block_one = ConvBlock(1, 1, f)
    self.block_one_dw = Resample(f, 2 * f, up=False)
    self.block_two = ConvBlock(2, 2 * f, 2 * f)
    self.block_two_dw = Resample(2 * f, 4 * f, up=False)
    self.block_three = ConvBlock(3, 4 * f, 4 * f)
    self.block_three_dw = Resample(4 * f, 8 * f, up=False)
    self.block_four = ConvBlock(3, 8 * f, 8 * f)
    self.block_four_dw = Resample(8 * f, 16 * f, up=False)
    self.block_five = ConvBlock(3, 16 * f, 16 * f)
    self.block_five_up = Resample(16 * f, 8 * f, up=True)
    self.block_six = ConvBlock(3, 8 * f, 8 * f)
    self.block_six_up = Resample(8 * f, 4 * f, up=True)
    self.block_seven = ConvBlock(3, 4 * f, 4 * f)
    self.block_seven_up = Resample(4 * f, 2 * f, up=True)
    self.block_eight = ConvBlock(2, 2 * f, 2 * f)
    self.block_eight_up = Resample(2 * f, f, up=True)
    self.block_nine = ConvBlock(1, f, f)
    self.out_conv = nn.Conv3d(f, n_classes, 1)
    self.dropout = nn.Dropout3d(p=0.5)

  def forward(self, x):
    x1 = self.block_one(x)
    x2 = self.block_two(self.block_one_dw(x1))
    x3 = self.block_three(self.block_two_dw(x2))
    x4 = self.block_four(self.block_three_dw(x3))
    x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
    x6 = self.block_six(self.block_five_up(x5) + x4)
    x7 = self.block_seven(self.block_six_up(x6) + x3)
    x8 = self.block_eight(self.block_seven_up(x7) + x2)
    x9 = self.dropout(self.block_nine(self.block_eight_up(x8) + x1))
    return self.out_conv(x9)


def sigmoid_rampup(current: float, length: float) -> float:
  """UA-MT `ramps.sigmoid_rampup`."""
  if length == 0:
    return 1.0
  phase = 1.0 - np.clip(current, 0.0, length) / length
  return float(np.exp(-5.0 * phase * phase))


def dice_loss(score, target):
  """UA-MT `losses.dice_loss` (one joint sum, squared denominators)."""
  target = target.float()
  smooth = 1e-5
  intersect = torch.sum(score * target)
  denom = torch.sum(score * score) + torch.sum(target * target)
  return 1.0 - (2 * intersect + smooth) / (denom + smooth)


class UAMTStep:
  """Student, EMA teacher and SGD of one UA-MT run; `step(images, labels)` takes one training step
  and returns its loss (a float, which synchronises the step).

  Args:
    n_filters: VNet width (16 in the recipe).
    seed: torch seed of the initialisation and of every draw.
    labeled_batch_size, mc_passes, total_steps: the recipe's 2, 8, 6000.
    threads: torch intra-op threads (None: torch's default).
  """

  def __init__(
    self,
    n_filters: int = 16,
    seed: int = 0,
    labeled_batch_size: int = 2,
    mc_passes: int = 8,
    total_steps: int = 6000,
    threads: int | None = None,
  ):
    if threads:
      torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = VNet(n_filters)
    self.ema_model = VNet(n_filters)
    for p in self.ema_model.parameters():
      p.detach_()
    self.model.train()
    self.ema_model.train()
    self.optimizer = torch.optim.SGD(
      self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4
    )
    self.labeled_batch_size = labeled_batch_size
    self.mc_passes = mc_passes
    self.total_steps = total_steps
    self.iter_num = 0

  def state_dicts(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(student, teacher) state dicts as numpy arrays, upstream names."""
    return tuple(
      {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}
      for m in (self.model, self.ema_model)
    )

  def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
    lb, it = self.labeled_batch_size, self.iter_num
    unlabeled = images[lb:]
    ema_inputs = unlabeled + torch.clamp(torch.randn_like(unlabeled) * 0.1, -0.2, 0.2)
    outputs = self.model(images)
    with torch.no_grad():
      ema_output = self.ema_model(ema_inputs)
    repeated = unlabeled.repeat(2, 1, 1, 1, 1)
    stride = repeated.shape[0] // 2
    preds = torch.zeros((stride * self.mc_passes,) + tuple(outputs.shape[1:]))
    for i in range(self.mc_passes // 2):
      noisy = repeated + torch.clamp(torch.randn_like(repeated) * 0.1, -0.2, 0.2)
      with torch.no_grad():
        preds[2 * stride * i : 2 * stride * (i + 1)] = self.ema_model(noisy)
    preds = F.softmax(preds, dim=1).reshape(self.mc_passes, stride, *outputs.shape[1:]).mean(0)
    uncertainty = -torch.sum(preds * torch.log(preds + 1e-6), dim=1, keepdim=True)

    loss_seg = F.cross_entropy(outputs[:lb], labels[:lb])
    outputs_soft = F.softmax(outputs, dim=1)
    loss_dice = dice_loss(outputs_soft[:lb, 1], labels[:lb] == 1)
    supervised = 0.5 * (loss_seg + loss_dice)
    weight = 0.1 * sigmoid_rampup(it // 150, 40.0)
    dist = (outputs_soft[lb:] - F.softmax(ema_output, dim=1)) ** 2
    threshold = (0.75 + 0.25 * sigmoid_rampup(it, self.total_steps)) * math.log(2)
    mask = (uncertainty < threshold).float()
    consistency = torch.sum(mask * dist) / (2 * torch.sum(mask) + 1e-16)
    loss = supervised + weight * consistency

    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    alpha = min(1 - 1 / (it + 1), 0.99)
    with torch.no_grad():
      for ema, p in zip(self.ema_model.parameters(), self.model.parameters()):
        ema.mul_(alpha).add_(p, alpha=1 - alpha)
    self.iter_num += 1
    return float(loss.item())

  def flops(self, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one step (convolutions and matmuls, forward and backward, 2 per multiply-add), by
    torch's FlopCounterMode. Takes the step it counts."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
      self.step(images, labels)
    return int(counter.get_total_flops())


def to_torch(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
  """A channels-last jaxseg batch (image [B, D, H, W, 1], label [B, D, H, W]) as torch tensors
  ([B, 1, D, H, W] float32, [B, D, H, W] int64)."""
  return (
    torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1), np.float32)),
    torch.from_numpy(np.asarray(label, np.int64)),
  )
