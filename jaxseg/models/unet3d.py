"""DyCON's 3D UNet with instance normalisation and a contrastive projection head ('unet3d_dycon').

Port of `KU-CVML/DyCON: code/networks/UNet3D_contrastive.py` `UNet3D` with the blocks `UnetConv3`
and `UnetUp3_CT` of `code/networks/utils.py` (commit 69c1384), built by
`net_factory_3d(net_type="unet_3D", in_chns=1, class_num=2, scaler=2)` in
`code/train_DyCON_BraTS19.py` / `train_DyCON_Pancreas.py`. Spec: docs/methods/dycon.md
section 1; fixture DyCON_UNet3D.npz (docs/parity.md). This is the SSL4MIS `unet_3D`, not
the UA-MT VNet.

Structure, f = filters (64, 128, 256, 512, 1024) // feature_scale ((16, .., 256) upstream):
  * `UnetConv3(cin, cout)` = 2 x [Conv 3^3 pad 1 (+bias) -> InstanceNorm (no affine, eps 1e-5) ->
    ReLU] (upstream's flag is called is_batchnorm, but the layer is InstanceNorm3d);
  * encoder conv1 (f0) -> maxpool 2 -> conv2 (f1) -> .. -> conv4 (f3) -> maxpool -> center (f4),
    then element-wise Dropout(0.3) on center;
  * decoder `UnetUp3_CT`: upsample x2 trilinear align_corners=False of the deeper map (no channel
    change), concat [skip, upsampled], UnetConv3 -> f_k; Dropout(0.3) on up1;
  * heads on up1: `final` 1x1 conv -> tanh (output_sdf, unused by DyCON) and `out_conv2` 1x1 conv
    (segmentation logits);
  * projection head on the dropped-out center: upsample x scale_factor trilinear align_corners=True,
    1x1 conv -> 512 -> BatchNorm -> ReLU -> 1x1 conv -> 256 -> BatchNorm (no activation), giving
    features at `scale_factor / 16` of the input resolution. These two BatchNorms are the only ones.

`remat=True` (config `model.remat`) rematerialises every UnetConv3 and UnetUp3CT (`nn.remat`, as
`jaxseg.models.vnet`): same parameters and numbers, less activation memory, one more forward of
each block in the backward pass. The projection head (1/8 resolution) is not rematerialised.

Init (torch_init=True): kaiming-normal (fan_in, gain sqrt 2) conv weights as upstream's
`weights_init_kaiming`; conv biases torch's default U(+-1/sqrt(fan_in)). One deviation: upstream
draws BatchNorm gamma from N(1, 0.02); `layers.BatchNorm` starts it at 1.

Parameter tree (torch name -> flax path, `torch_key_map` at the end of this file):
  convK.convS.0           -> convK/convS           (K in 1..4, S in 1..2), center.convS.0 -> center/convS
  up_concatK.conv.convS.0 -> up_concatK/conv/convS
  final, out_conv2        -> final, out_conv2
  projection.0 / .1 / .3 / .4 -> projection/conv0 / bn1 / conv3 / bn4
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg.models import layers
from jaxseg.models import torch_keys
from jaxseg.models.resize import resize_linear_align_corners

Array = jax.Array

BASE_FILTERS = (64, 128, 256, 512, 1024)


def kaiming_normal(fan_in: int) -> layers.Initializer:
  """torch `kaiming_normal_(a=0, mode='fan_in')`: N(0, 2 / fan_in), drawn flat (compile speed)."""
  std = math.sqrt(2.0 / fan_in)

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return (jax.random.normal(key, (math.prod(shape),), dtype) * std).reshape(shape)

  return init


class KaimingConv(nn.Module):
  """Conv3d k^3, stride 1, symmetric padding (k - 1) / 2, with bias: `[B, D, H, W, cin]` ->
  `[B, D, H, W, features]`; kernel (k, k, k, cin, features) = torch weight.transpose(2, 3, 4, 1, 0).

  torch_init: upstream init (kaiming-normal weight, U(+-1/sqrt(fan_in)) bias); else flax's lecun
  normal and zero bias.
  """

  features: int
  kernel_size: int = 3
  torch_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = cin * k**3
    if self.torch_init:
      kernel_init, bias_init = kaiming_normal(fan_in), layers.torch_uniform(fan_in)
    else:
      kernel_init, bias_init = layers.lecun_normal(fan_in), nn.initializers.zeros
    kernel = self.param('kernel', kernel_init, (k, k, k, cin, self.features), self.param_dtype)
    bias = self.param('bias', bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return layers.conv(x, kernel, ((k - 1) // 2,) * 3) + bias


class UnetConv3(nn.Module):
  """2 x [Conv 3^3 (pad 1, bias) -> InstanceNorm -> ReLU]: `[B, D, H, W, cin]` -> `[.., features]`."""

  features: int
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for name in ('conv1', 'conv2'):
      x = KaimingConv(self.features, 3, torch_init=self.torch_init, dtype=self.dtype, name=name)(x)
      x = nn.relu(layers.InstanceNorm(dtype=self.dtype)(x))
    return x


def upsample2x_matrix(n: int) -> np.ndarray:
  """float64 [2n, n]: torch linear x2 upsampling with align_corners=False along one axis. Output o
  samples input (o + 0.5) / 2 - 0.5 clamped at 0, the upper neighbour clamped to n - 1: weights
  (0.25, 0.75) / (0.75, 0.25) inside, copies at the two edges."""
  src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0.0)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  m = np.zeros((2 * n, n))
  np.add.at(m, (np.arange(2 * n), lo), 1.0 - (src - lo))
  np.add.at(m, (np.arange(2 * n), hi), src - lo)
  return m


def upsample2x_trilinear(x: Array) -> Array:
  """`nn.Upsample(scale_factor=2, mode='trilinear', align_corners=False)` on `[B, D, H, W, C]`
  (what `jax.image.resize(..., 'trilinear')` computes), as one small matmul per axis with float64
  weights cast to x's dtype: exact in an x64 forward, where resize's float32 weights moved the
  parity fixture's float64 loss by 2e-9 relative."""
  for axis in (1, 2, 3):
    m = jnp.asarray(upsample2x_matrix(x.shape[axis]), x.dtype)
    # HIGHEST: accelerators would otherwise run this matmul in bf16 passes.
    y = jnp.tensordot(m, x, axes=([1], [axis]), precision=lax.Precision.HIGHEST)
    x = jnp.moveaxis(y, 0, axis)
  return x


class UnetUp3CT(nn.Module):
  """Upsample the deeper map x2, concat [skip, upsampled], UnetConv3 -> features (upstream
  `UnetUp3_CT`). `skip [B, 2D, 2H, 2W, cs]`, `deep [B, D, H, W, cd]` -> `[B, 2D, 2H, 2W, features]`.
  Upstream zero-pads the skip when the sizes differ; the input check (sides divisible by 16) rules
  that out, so there is no padding here."""

  features: int
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, skip: Array, deep: Array) -> Array:
    up = upsample2x_trilinear(deep).astype(skip.dtype)
    x = jnp.concatenate([skip, up], axis=-1)
    return UnetConv3(self.features, torch_init=self.torch_init, dtype=self.dtype, name='conv')(x)


RematUnetConv3 = nn.remat(UnetConv3)
RematUnetUp3CT = nn.remat(UnetUp3CT)


class ProjectionHead(nn.Module):
  """Upsample x scale_factor (trilinear, align_corners=True) -> 1x1 conv -> BN -> ReLU -> 1x1 conv
  -> BN: `[B, d, h, w, cin]` -> `[B, s d, s h, s w, out_features]` (upstream `self.projection` after
  `F.interpolate(center, scale_factor=s, mode='trilinear', align_corners=True)`)."""

  scale_factor: int = 2
  hidden_features: int = 512
  out_features: int = 256
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    s = self.scale_factor
    x = resize_linear_align_corners(x, [s * n for n in x.shape[1:-1]])
    x = KaimingConv(
      self.hidden_features, 1, torch_init=self.torch_init, dtype=self.dtype, name='conv0'
    )(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name='bn1')(x, train))
    x = KaimingConv(
      self.out_features, 1, torch_init=self.torch_init, dtype=self.dtype, name='conv3'
    )(x)
    return layers.BatchNorm(dtype=self.dtype, name='bn4')(x, train)


class UNet3D(nn.Module):
  """DyCON `UNet3D`: `x [B, D, H, W, in_channels]` -> logits `[B, D, H, W, n_classes]`.

  D, H, W must be divisible by 16 (four max-pools).

  Attributes:
    in_channels: input channels (checked against the input).
    n_classes: output channels of both heads.
    feature_scale: filters are (64, 128, 256, 512, 1024) // feature_scale (4 upstream; the parity
      fixture uses 16).
    n_filters: if > 0, the first stage's width f instead (filters f * (1, 2, 4, 8, 16)), the knob
      the other networks share (config_lib.smoke sets it); n_filters 16 == feature_scale 4.
    scale_factor: upsampling of the bottleneck before the projection head (upstream
      `feature_scaler`, 2): features come out at `scale_factor / 16` of the input resolution.
    proj_hidden, proj_features: widths of the projection head (512 and 256 upstream).
    dropout_rate: element-wise dropout on center and on up1 in train mode (0.3 upstream).
    torch_init: upstream initialisation (see the module docstring) instead of flax's defaults.
    remat: recompute each block's activations in the backward pass (module docstring).
    dtype: compute dtype; params stay float32; outputs come back in at least float32.

  Call: `apply(variables, x, train=False, turnoff_drop=False, return_all=False)`. train=True uses
  batch statistics in the projection head's BatchNorms (pass mutable=['batch_stats']) and, unless
  turnoff_drop, draws dropout masks from the 'dropout' rng stream. return_all=True returns the
  upstream triple `(output_sdf [B, D, H, W, n_classes] (tanh), logits, features
  [B, sD/16, sH/16, sW/16, proj_features])`; all three are always computed (jit drops what is
  unused), so `init` creates every variable either way.
  """

  in_channels: int = 1
  n_classes: int = 2
  feature_scale: int = 4
  n_filters: int = 0
  scale_factor: int = 2
  proj_hidden: int = 512
  proj_features: int = 256
  dropout_rate: float = 0.3
  torch_init: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, turnoff_drop: bool = False, return_all: bool = False
  ):
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'UNet3D: dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if x.ndim != 5 or x.shape[-1] != self.in_channels:
      raise ValueError(
        f'UNet3D: expected input [B, D, H, W, {self.in_channels}] (channels-last), '
        f'got shape {x.shape}'
      )
    if any(s % 16 for s in x.shape[1:4]):
      raise ValueError(
        f'UNet3D: spatial dims (D, H, W) = {x.shape[1:4]} of input shape {x.shape} '
        'must all be divisible by 16'
      )
    if self.n_filters > 0:
      f = [self.n_filters * 2**k for k in range(len(BASE_FILTERS))]
    else:
      f = [c // self.feature_scale for c in BASE_FILTERS]
    if min(f) < 1:
      raise ValueError(f'UNet3D: feature_scale={self.feature_scale} leaves no filters ({f})')
    common = dict(torch_init=self.torch_init, dtype=self.dtype)
    use_dropout = train and not turnoff_drop and self.dropout_rate > 0
    pool = lambda t: nn.max_pool(t, (2, 2, 2), strides=(2, 2, 2), padding='VALID')
    conv_block = RematUnetConv3 if self.remat else UnetConv3
    up_block = RematUnetUp3CT if self.remat else UnetUp3CT

    conv1 = conv_block(f[0], name='conv1', **common)(x)
    conv2 = conv_block(f[1], name='conv2', **common)(pool(conv1))
    conv3 = conv_block(f[2], name='conv3', **common)(pool(conv2))
    conv4 = conv_block(f[3], name='conv4', **common)(pool(conv3))
    center = conv_block(f[4], name='center', **common)(pool(conv4))
    # Upstream dropout1 / dropout2: two nn.Dropout modules, element-wise.
    center = nn.Dropout(self.dropout_rate, name='dropout1')(center, deterministic=not use_dropout)

    up4 = up_block(f[3], name='up_concat4', **common)(conv4, center)
    up3 = up_block(f[2], name='up_concat3', **common)(conv3, up4)
    up2 = up_block(f[1], name='up_concat2', **common)(conv2, up3)
    up1 = up_block(f[0], name='up_concat1', **common)(conv1, up2)
    up1 = nn.Dropout(self.dropout_rate, name='dropout2')(up1, deterministic=not use_dropout)

    out_dtype = jnp.promote_types(jnp.result_type(up1), jnp.float32)
    logits = KaimingConv(self.n_classes, 1, name='out_conv2', **common)(up1).astype(out_dtype)
    if not return_all:
      # Still build the other heads so that `init` creates all variables whatever the flag.
      if self.is_initializing():
        KaimingConv(self.n_classes, 1, name='final', **common)(up1)
        ProjectionHead(
          self.scale_factor, self.proj_hidden, self.proj_features, name='projection', **common
        )(center, train)
      return logits
    sdf = jnp.tanh(KaimingConv(self.n_classes, 1, name='final', **common)(up1)).astype(out_dtype)
    features = ProjectionHead(
      self.scale_factor, self.proj_hidden, self.proj_features, name='projection', **common
    )(center, train).astype(out_dtype)
    return sdf, logits, features


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---


def torch_key_map(**unused) -> torch_keys.KeyMap:
  """DyCON's UNet3D (KU-CVML/DyCON code/networks/UNet3D_contrastive.py + utils.py): each
  UnetConv3 holds `convS.0` (Conv3d) of its two Sequential stages (InstanceNorm has no params);
  `projection` is Sequential [Conv3d, BatchNorm3d, ReLU, Conv3d, BatchNorm3d] (flax conv0, bn1,
  conv3, bn4)."""
  del unused
  perm = torch_keys.conv_perm(3)
  out = {}
  blocks = [(b, (b,)) for b in ('conv1', 'conv2', 'conv3', 'conv4', 'center')]
  blocks += [(f'up_concat{k}.conv', (f'up_concat{k}', 'conv')) for k in (4, 3, 2, 1)]
  for torch_prefix, path in blocks:
    for s in ('conv1', 'conv2'):
      out.update(torch_keys.conv_entries(f'{torch_prefix}.{s}.0', path + (s,), perm))
  for head in ('final', 'out_conv2'):
    out.update(torch_keys.conv_entries(head, (head,), perm))
  for i, kind in ((0, 'conv'), (1, 'bn'), (3, 'conv'), (4, 'bn')):
    path = ('projection', f'{kind}{i}')
    if kind == 'conv':
      out.update(torch_keys.conv_entries(f'projection.{i}', path, perm))
    else:
      out.update(torch_keys.norm_entries('batchnorm', f'projection.{i}', path))
  return out


def _torch_example_shape(in_channels: int = 1, **unused) -> tuple[int, ...]:
  del unused
  return (1, 16, 16, 16, in_channels)


TORCH_MAP = torch_keys.TorchMap(torch_key_map, _torch_example_shape)
