"""VNet of the semi-supervised LA literature (UA-MT, MT, UPC, SASSNet, DTC, MC-Net ...).

Port of `yulequan/UA-MT: code/networks/vnet.py` `VNet` (commit 88ed29a; byte-identical copies in
HiLab-git/DTC and HiLab-git/SSL4MIS; UPC-Pytorch adds `dropout_rate`). Spec:
docs/methods/vnet.md. A plain encoder/decoder with additive skips, not Milletari's residual
V-Net.

Parameter tree (torch name -> flax path, `torch_key_map` at the end of this file):
  block_X.conv.{s*k}    -> block_X/conv{k}   (s = 3 with a norm layer, 2 with normalization='none')
  block_X.conv.{s*k+1}  -> block_X/bn{k}     (whatever the norm kind)
  block_X_dw.conv.0 / block_X_up.conv.0 -> block_X_dw/conv0, block_X_up/conv0; .conv.1 -> bn0
  out_conv              -> out_conv

The encoder and decoder are written once (`encoder_blocks`, `decoder_blocks`): `VNet` builds them in
its own scope (flat parameter tree above), the `Encoder` / `Decoder` modules under their own name
(BCP's and CML's VNets: `encoder/block_X...`, `decoderK/block_X_up...`). `check_input` is the input
validation all of them share.

`remat=True` (config `model.remat`) wraps every ConvBlock and ResampleBlock in `nn.remat`
(`jax.checkpoint` lifted over the module's variables): the backward pass recomputes a block's
convolutions, norms and ReLUs from its input instead of keeping them, for less activation memory
at the cost of one more forward of each block. Same parameter tree and, up to float rounding, the
same numbers (tests/test_remat.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models import torch_keys
from jaxseg.models.resize import upsample2x_linear_align_corners

Array = jax.Array

# Decoder up-sampling (upstream `Decoder(up_type=...)`): 0 = k2 s2 transposed conv -> norm -> ReLU;
# 1 = trilinear (align_corners=True) x2 -> 3x3x3 conv -> norm -> ReLU.
UP_TYPES = (0, 1)
_NAMES = ('one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
_STAGES = (1, 2, 3, 3, 3, 3, 3, 2, 1)  # ConvBlock stages of block_one .. block_nine


def check_input(
  model: str, x: Array, n_channels: int, normalization: str, dropout_rate: float
) -> None:
  """Raises ValueError (naming `model`) unless `normalization` is one of `layers.NORMS`,
  0 <= dropout_rate < 1 and `x` is `[B, D, H, W, n_channels]` with D, H, W divisible by 16 (the
  four stride-2 downsamplings)."""
  if normalization not in layers.NORMS:
    raise ValueError(
      f'{model}: unknown normalization {normalization!r}; expected one of {layers.NORMS}'
    )
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'{model}: dropout_rate must be in [0, 1), got {dropout_rate}')
  if x.ndim != 5 or x.shape[-1] != n_channels:
    raise ValueError(
      f'{model}: expected input [B, D, H, W, {n_channels}] (channels-last), got shape {x.shape}'
    )
  if any(s % 16 for s in x.shape[1:4]):
    raise ValueError(
      f'{model}: spatial dims (D, H, W) = {x.shape[1:4]} of input shape {x.shape} '
      'must all be divisible by 16'
    )


def dropout3d(rate: float) -> nn.Dropout:
  """torch Dropout3d (one draw per sample and channel) as the submodule 'dropout'."""
  return nn.Dropout(rate, broadcast_dims=(1, 2, 3), name='dropout')


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
      x = layers.Conv(
        self.features,
        (3, 3, 3),
        padding=1,
        torch_init=self.torch_init,
        dtype=self.dtype,
        name=f'conv{k}',
      )(x)
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
    x = cls(
      self.features, fast=self.fast, torch_init=self.torch_init, dtype=self.dtype, name='conv0'
    )(x)
    x = layers.norm(self.normalization, dtype=self.dtype, name='bn0')(x, train)
    return nn.relu(x)


# nn.remat counts `self` as argument 0: `train` (argument 2) is a Python bool choosing code paths.
RematConvBlock = nn.remat(ConvBlock, static_argnums=(2,))
RematResampleBlock = nn.remat(ResampleBlock, static_argnums=(2,))


def blocks(remat: bool) -> tuple[type[nn.Module], type[nn.Module]]:
  """(ConvBlock, ResampleBlock), rematerialised when `remat` (same parameters and numbers)."""
  return (RematConvBlock, RematResampleBlock) if remat else (ConvBlock, ResampleBlock)


def encoder_blocks(
  x: Array,
  train: bool,
  *,
  n_filters: int,
  fast_updown: bool,
  dropout: nn.Dropout | None = None,
  remat: bool = False,
  **common,
) -> list[Array]:
  """`x [B, D, H, W, cin]` -> `[x1, x2, x3, x4, x5]` (channels f .. 16f at full .. 1/16 resolution),
  x5 after `dropout` when given. Builds block_one .. block_five and block_one_dw .. block_four_dw
  in the calling module's scope (rematerialised with `remat`); `common`: normalization,
  torch_init, dtype."""
  conv_block, resample_block = blocks(remat)
  feats = []
  for k in range(5):
    width = n_filters * 2**k
    x = conv_block(_STAGES[k], width, name=f'block_{_NAMES[k]}', **common)(x, train)
    feats.append(x)
    if k < 4:
      x = resample_block(
        2 * width, up=False, fast=fast_updown, name=f'block_{_NAMES[k]}_dw', **common
      )(x, train)
  if dropout is not None:
    feats[4] = dropout(feats[4], deterministic=False)
  return feats


def decoder_blocks(
  feats: list[Array],
  train: bool,
  *,
  n_classes: int,
  n_filters: int,
  fast_updown: bool,
  up_type: int = 0,
  dropout: nn.Dropout | None = None,
  remat: bool = False,
  **common,
) -> tuple[Array, list[Array]]:
  """`[x1, .., x5]` -> `(logits [B, D, H, W, n_classes], [x6, x7, x8, x9])` with additive skips
  (x9 after `dropout` when given; logits in at least float32). Builds block_five_up ..
  block_eight_up (`UP_TYPES`), block_six .. block_nine and out_conv in the calling module's
  scope (the blocks rematerialised with `remat`)."""
  if up_type not in UP_TYPES:
    raise ValueError(f'VNet decoder: up_type must be one of {UP_TYPES}, got {up_type}')
  conv_block, resample_block = blocks(remat)
  x, outs = feats[4], []
  for k in range(4):
    width, name = n_filters * 2 ** (3 - k), f'block_{_NAMES[k + 4]}_up'
    if up_type == 0:
      x = resample_block(width, up=True, fast=fast_updown, name=name, **common)(x, train)
    else:  # CML's Upsampling_function: parameter-free x2 upsample, then block_X_up/{conv0, bn0}
      x = conv_block(1, width, name=name, **common)(upsample2x_linear_align_corners(x), train)
    x = x + feats[3 - k]
    x = conv_block(_STAGES[k + 5], width, name=f'block_{_NAMES[k + 5]}', **common)(x, train)
    outs.append(x)
  if dropout is not None:
    outs[3] = dropout(outs[3], deterministic=False)
  logits = layers.Conv(
    n_classes, (1, 1, 1), torch_init=common['torch_init'], dtype=common['dtype'], name='out_conv'
  )(outs[3])
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), outs


def _block_kwargs(module: nn.Module, dropout: nn.Dropout | None) -> dict[str, Any]:
  """`encoder_blocks` / `decoder_blocks` keyword arguments from a module with VNet's attributes."""
  return dict(
    n_filters=module.n_filters,
    fast_updown=module.fast_updown,
    dropout=dropout,
    remat=module.remat,
    normalization=module.normalization,
    torch_init=module.torch_init,
    dtype=module.dtype,
  )


class _Part(nn.Module):
  """Attributes shared by `Encoder` and `Decoder` (as `VNet`'s)."""

  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  torch_init: bool = True
  fast_updown: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  def _kwargs(self, train: bool, use_dropout: bool) -> dict[str, Any]:
    on = self.has_dropout and train and use_dropout
    return _block_kwargs(self, dropout3d(self.dropout_rate) if on else None)


def part_kwargs(net: nn.Module) -> dict[str, Any]:
  """The `Encoder` / `Decoder` attributes of `net`, a network with VNet's attributes."""
  return {
    k: getattr(net, k)
    for k in (
      'n_filters',
      'normalization',
      'has_dropout',
      'dropout_rate',
      'torch_init',
      'fast_updown',
      'remat',
      'dtype',
    )
  }


class Encoder(_Part):
  """VNet encoder as a submodule: `x [B, D, H, W, cin]` -> `[x1, .., x5]` (`encoder_blocks`), with
  its own Dropout3d on x5 (train mode, has_dropout, use_dropout)."""

  @nn.compact
  def __call__(self, x: Array, train: bool = False, use_dropout: bool = True) -> list[Array]:
    return encoder_blocks(x, train, **self._kwargs(train, use_dropout))


class Decoder(_Part):
  """VNet decoder as a submodule: `[x1, .., x5]` -> logits `[B, D, H, W, n_classes]`
  (`decoder_blocks`; up_type in `UP_TYPES`), with its own Dropout3d on x9 (train mode,
  has_dropout, use_dropout)."""

  n_classes: int = 2
  up_type: int = 0

  @nn.compact
  def __call__(self, feats: list[Array], train: bool = False, use_dropout: bool = True) -> Array:
    return decoder_blocks(
      feats,
      train,
      n_classes=self.n_classes,
      up_type=self.up_type,
      **self._kwargs(train, use_dropout),
    )[0]


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
    remat: recompute each block's activations in the backward pass (module docstring).
    dtype: compute dtype (params stay float32; jnp.bfloat16 for bf16 compute). Logits and
      features are returned in at least float32.

  Call: `apply(variables, x, train=False, turnoff_drop=False, return_features=False)`. With
  train=True, batch norm uses batch statistics and updates `batch_stats` (pass
  mutable=['batch_stats']); dropout, when has_dropout and not turnoff_drop, draws from the 'dropout'
  rng stream. With return_features=True the call returns `(logits, features)`, features a dict of
  intermediate maps that AC-MT (`lemoshu/AC-MT: code/networks/vnet.py`) stashes as
  `featuremap_center`: 'x5' `[B, D/16, H/16, W/16, 16f]` (the bottleneck after dropout, VNet),
  'x8' `[B, D/2, H/2, W/2, 2f]` (block_eight's output before its up-sampling, VNet_MTPD), and
  'x9' `[B, D, H, W, f]` (block_nine's output after dropout: what out_conv reads; DTC's VNetSDF
  puts its second head on it). Same parameters either way.
  """

  n_channels: int = 1
  n_classes: int = 2
  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  torch_init: bool = True
  fast_updown: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, turnoff_drop: bool = False, return_features: bool = False
  ):
    check_input('VNet', x, self.n_channels, self.normalization, self.dropout_rate)
    # One module at both sites, as upstream's single nn.Dropout3d; each call draws its own mask.
    dropout = dropout3d(self.dropout_rate)
    kw = _block_kwargs(self, dropout if self.has_dropout and train and not turnoff_drop else None)
    feats = encoder_blocks(x, train, **kw)
    logits, (_, _, x8, x9) = decoder_blocks(feats, train, n_classes=self.n_classes, **kw)
    if return_features:
      features = {'x5': feats[4], 'x8': x8, 'x9': x9}
      return logits, {k: v.astype(logits.dtype) for k, v in features.items()}
    return logits


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---

# (name, kind, stages) of the UA-MT VNet, in forward order (yulequan/UA-MT code/networks/vnet.py).
VNET_BLOCKS = (
  ('block_one', 'conv', 1),
  ('block_one_dw', 'down', 1),
  ('block_two', 'conv', 2),
  ('block_two_dw', 'down', 1),
  ('block_three', 'conv', 3),
  ('block_three_dw', 'down', 1),
  ('block_four', 'conv', 3),
  ('block_four_dw', 'down', 1),
  ('block_five', 'conv', 3),
  ('block_five_up', 'up', 1),
  ('block_six', 'conv', 3),
  ('block_six_up', 'up', 1),
  ('block_seven', 'conv', 3),
  ('block_seven_up', 'up', 1),
  ('block_eight', 'conv', 2),
  ('block_eight_up', 'up', 1),
  ('block_nine', 'conv', 1),
)
N_ENCODER_BLOCKS = 9  # block_one .. block_five in VNET_BLOCKS


def vnet_block_entries(
  normalization: str = 'batchnorm', prefix: str = '', path: tuple[str, ...] = ()
) -> torch_keys.KeyMap:
  """Key map of the 17 VNet blocks (not out_conv), for networks that reuse them.

  Upstream blocks are `nn.Sequential`s of [conv, norm, ReLU] per stage (or [conv, ReLU] with
  normalization='none'), so stage k's conv is `.conv.{s*k}` and its norm `.conv.{s*k+1}`.
  """
  stride = 2 if normalization == 'none' else 3
  out = {}
  for name, kind, stages in VNET_BLOCKS:
    perm = torch_keys.conv_transpose_perm(3) if kind == 'up' else torch_keys.conv_perm(3)
    for k in range(stages):
      t = f'{prefix}{name}.conv'
      out.update(torch_keys.conv_entries(f'{t}.{stride * k}', path + (name, f'conv{k}'), perm))
      out.update(
        torch_keys.norm_entries(normalization, f'{t}.{stride * k + 1}', path + (name, f'bn{k}'))
      )
  return out


def torch_key_map(normalization: str = 'batchnorm', **unused) -> torch_keys.KeyMap:
  """UA-MT's VNet: the 17 blocks and out_conv, flax paths block_X/conv{k}, block_X/bn{k}."""
  del unused
  out = vnet_block_entries(normalization)
  out.update(torch_keys.conv_entries('out_conv', ('out_conv',), torch_keys.conv_perm(3)))
  return out


TORCH_MAP = torch_keys.TorchMap(torch_key_map, torch_keys.volume_example_shape)
