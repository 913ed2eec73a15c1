"""VNet of the semi-supervised LA literature (UA-MT, MT, UPC, SASSNet, DTC, MC-Net ...).

Port of `yulequan/UA-MT: code/networks/vnet.py` `VNet` (commit 88ed29a; byte-identical copies in
HiLab-git/DTC and HiLab-git/SSL4MIS; UPC-Pytorch adds `dropout_rate`). Spec:
shared/spec/methods/vnet.md. A plain encoder/decoder with additive skips, not Milletari's residual
V-Net.

Parameter tree (torch name -> flax path, see `jaxseg.models.torch_import`):
  block_X.conv.{s*k}    -> block_X/conv{k}   (s = 3 with a norm layer, 2 with normalization='none')
  block_X.conv.{s*k+1}  -> block_X/bn{k}     (whatever the norm kind)
  block_X_dw.conv.0 / block_X_up.conv.0 -> block_X_dw/conv0, block_X_up/conv0; .conv.1 -> bn0
  out_conv              -> out_conv
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

Array = jax.Array


class ConvBlock(nn.Module):
  """`n_stages` x [Conv 3x3x3 (padding 1, bias) -> norm -> ReLU]; not residual.

  `[B, D, H, W, cin]` -> `[B, D, H, W, features]` (upstream `ConvBlock`).
  """
  n_stages: int
  features: int
  normalization: str = 'batchnorm'
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for k in range(self.n_stages):
      x = layers.Conv(self.features, (3, 3, 3), padding=1, torch_init=self.torch_init,
                      dtype=self.dtype, name=f'conv{k}')(x)
      x = layers.norm(self.normalization, dtype=self.dtype, name=f'bn{k}')(x, train)
      x = nn.relu(x)
    return x


class ResampleBlock(nn.Module):
  """Down (k2 s2 conv) or up (k2 s2 transposed conv) -> norm -> ReLU.

  down: `[B, D, H, W, cin]` -> `[B, D/2, H/2, W/2, features]` (upstream `DownsamplingConvBlock`);
  up: `[B, D, H, W, cin]` -> `[B, 2D, 2H, 2W, features]` (upstream `UpsamplingDeconvBlock`).
  """
  features: int
  up: bool
  normalization: str = 'batchnorm'
  torch_init: bool = True
  fast: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cls = layers.UpConv2x if self.up else layers.DownConv2x
    x = cls(self.features, fast=self.fast, torch_init=self.torch_init, dtype=self.dtype,
            name='conv0')(x)
    x = layers.norm(self.normalization, dtype=self.dtype, name='bn0')(x, train)
    return nn.relu(x)


class VNet(nn.Module):
  """UA-MT VNet: `x [B, D, H, W, n_channels]` -> logits `[B, D, H, W, n_classes]`.

  D, H, W must be divisible by 16 (four stride-2 downsamplings). Channels per stage are
  f, 2f, 4f, 8f, 16f with f = n_filters. Skips are added after the up-block's ReLU.

  Attributes:
    n_channels: input channels (checked against the input).
    n_classes: output channels (raw logits, no softmax).
    n_filters: width f of the first stage (16 in every paper; parity fixtures use 4).
    normalization: 'none' | 'batchnorm' | 'groupnorm' | 'instancenorm'.
    has_dropout: channel-wise dropout (torch Dropout3d) on x5 and x9 in train mode.
    dropout_rate: its drop probability (0.5 upstream; UPC trains with 0.9).
    torch_init: torch default init (U(+-1/sqrt(fan_in)) for conv weights and biases) instead of
      the flax defaults.
    fast_updown: k2 s2 down/up convs as space-to-depth + matmul (same params and numbers).
    dtype: compute dtype (params stay float32; jnp.bfloat16 for bf16 compute). Logits are
      returned in at least float32.

  Call: `apply(variables, x, train=False, turnoff_drop=False, return_features=False)`. With
  train=True, batch norm uses batch statistics and updates `batch_stats` (pass
  mutable=['batch_stats']); dropout, when has_dropout and not turnoff_drop, draws from the 'dropout'
  rng stream. With return_features=True the call returns `(logits, features)`, features a dict of
  intermediate maps that AC-MT (`lemoshu/AC-MT: code/networks/vnet.py`) stashes as
  `featuremap_center`: 'x5' `[B, D/16, H/16, W/16, 16f]` (the bottleneck after dropout, VNet) and
  'x8' `[B, D/2, H/2, W/2, 2f]` (block_eight's output before its up-sampling, VNet_MTPD). Same
  parameters either way.
  """
  n_channels: int = 1
  n_classes: int = 2
  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  torch_init: bool = True
  fast_updown: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, turnoff_drop: bool = False,
               return_features: bool = False):
    if self.normalization not in layers.NORMS:
      raise ValueError(f'VNet: unknown normalization {self.normalization!r}; expected one of '
                       f'{layers.NORMS}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'VNet: dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if x.ndim != 5 or x.shape[-1] != self.n_channels:
      raise ValueError(f'VNet: expected input [B, D, H, W, {self.n_channels}] (channels-last), '
                       f'got shape {x.shape}')
    if any(s % 16 for s in x.shape[1:4]):
      raise ValueError(f'VNet: spatial dims (D, H, W) = {x.shape[1:4]} of input shape {x.shape} '
                       'must all be divisible by 16')

    f = self.n_filters
    common = dict(normalization=self.normalization, torch_init=self.torch_init, dtype=self.dtype)

    def conv_block(name, n_stages, features):
      return ConvBlock(n_stages, features, name=name, **common)

    def resample(name, features, up):
      return ResampleBlock(features, up, fast=self.fast_updown, name=name, **common)

    # One module at both sites, as upstream's single nn.Dropout3d; each call draws its own mask.
    dropout = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2, 3), name='dropout')
    use_dropout = self.has_dropout and train and not turnoff_drop

    x1 = conv_block('block_one', 1, f)(x, train)
    x = resample('block_one_dw', 2 * f, up=False)(x1, train)
    x2 = conv_block('block_two', 2, 2 * f)(x, train)
    x = resample('block_two_dw', 4 * f, up=False)(x2, train)
    x3 = conv_block('block_three', 3, 4 * f)(x, train)
    x = resample('block_three_dw', 8 * f, up=False)(x3, train)
    x4 = conv_block('block_four', 3, 8 * f)(x, train)
    x = resample('block_four_dw', 16 * f, up=False)(x4, train)
    x5 = conv_block('block_five', 3, 16 * f)(x, train)
    if use_dropout:
      x5 = dropout(x5, deterministic=False)

    x = resample('block_five_up', 8 * f, up=True)(x5, train) + x4
    x = conv_block('block_six', 3, 8 * f)(x, train)
    x = resample('block_six_up', 4 * f, up=True)(x, train) + x3
    x = conv_block('block_seven', 3, 4 * f)(x, train)
    x = resample('block_seven_up', 2 * f, up=True)(x, train) + x2
    x8 = conv_block('block_eight', 2, 2 * f)(x, train)
    x = resample('block_eight_up', f, up=True)(x8, train) + x1
    x9 = conv_block('block_nine', 1, f)(x, train)
    if use_dropout:
      x9 = dropout(x9, deterministic=False)
    logits = layers.Conv(self.n_classes, (1, 1, 1), torch_init=self.torch_init, dtype=self.dtype,
                         name='out_conv')(x9)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if return_features:
      return logits, {'x5': x5, 'x8': x8}
    return logits
