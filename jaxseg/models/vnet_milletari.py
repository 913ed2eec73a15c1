"""The original V-Net of Milletari et al. 2016 (5x5x5 convolutions, PReLU, residual stages).

Port of `mattmacy/vnet.pytorch` @a00c8ea `vnet.py` `VNet(elu=False, nll=True)`, the 2017 PyTorch
port of the Caffe release (`faustomilletari/VNet`, prototxt depths 1/2/3/2 per stage, with batch
norm and dropout added). Channels-last: input `[B, D, H, W, 1]`, every spatial size divisible by
16; output logits `[B, D, H, W, n_classes]`. Upstream returns `log_softmax` of these logits
reshaped to `(B*D*H*W, 2)` (row ((b*D + d)*H + h)*W + w); jaxseg returns the logits, as every
other model, and the methods apply the softmax.

Behaviour kept from upstream, with f = `n_filters` (16 upstream):
* `ContBatchNorm3d`: batch statistics in train AND eval mode (eps 1e-5). The running stats are
  never read; they are still updated (momentum 0.1, unbiased variance) whenever the `batch_stats`
  collection is mutable, as upstream updates them on every forward.
* Input transition: conv 1->f, BN, + the input repeated over the f channels, PReLU. Upstream
  builds the repeat by concatenating f copies of x along the BATCH axis and adding in flat order
  (torch 0.1 had no broadcasting), which for a batch B > 1 adds x[(f*b + c) mod B] to channel c of
  sample b (samples mix). `literal_batch_repeat=False` (default) adds each sample's own input to
  every channel, as the paper and the upstream comment intend; `True` reproduces the 2017 code
  (the two agree for B = 1).
* Down stages (f->2f: 1 LUConv, 2f->4f: 2, 4f->8f: 3 with dropout, 8f->16f: 2 with dropout):
  down = PReLU(BN(conv k2 s2)); h = LUConvs(dropout(down)); out = PReLU(h + down).
* Up stages (16f: 2 LUConvs, dropout; 16f->8f: 2, dropout; 8f->4f: 1; 4f->2f: 1): the input
  goes through dropout where the stage has it, the skip always (`do2`); u = PReLU(BN(transposed
  conv k2 s2 to out/2 channels)); cat = [u, skip]; out = PReLU(LUConvs(cat) + cat).
* Output: conv 5^3 2f->2, BN, PReLU, conv 1x1x1 2->n_classes.
* Dropout3d p=0.5 (whole channels per sample) in down_tr128, down_tr256 (do1), up_tr256 and
  up_tr128 (do1, do2), up_tr64 and up_tr32 (do2). `dropout_masks` replays recorded torch masks.
* Init as upstream `train.py` `weights_init`: every Conv3d kaiming-normal (fan_in, gain sqrt 2)
  with zero bias; transposed convs keep torch's default U(+-1/sqrt(fan_in)); BN gamma 1, beta 0;
  PReLU slopes 0.25.

Flax variable names follow the torch module names (`ops.k` becomes `ops_k`), so `torch_key_map`
below is the identity up to leaf names and kernel layouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models import layers
from jaxseg.models import torch_keys

Array = jax.Array

# (torch name, n LUConvs, dropout on the input) of the down and up stages at width 16; the stage
# names keep the upstream channel counts whatever the width, as the state_dict keys do.
DOWN_STAGES = (
  ('down_tr32', 1, False),
  ('down_tr64', 2, False),
  ('down_tr128', 3, True),
  ('down_tr256', 2, True),
)
UP_STAGES = (
  ('up_tr256', 2, True),
  ('up_tr128', 2, True),
  ('up_tr64', 1, False),
  ('up_tr32', 1, False),
)


def _kaiming_normal(fan_in: int) -> layers.Initializer:
  """torch `kaiming_normal_` (fan_in, gain sqrt 2): N(0, 2/fan_in)."""
  std = math.sqrt(2.0 / fan_in)

  def init(key: Array, shape, dtype=jnp.float32) -> Array:
    return (jax.random.normal(key, (math.prod(shape),), dtype) * std).reshape(shape)

  return init


class Conv3d(nn.Module):
  """torch Conv3d(cin, features, k, stride, padding) with `weights_init` (kaiming normal, zero bias).

  `[B, D, H, W, cin]` -> `[B, D', H', W', features]`; kernel (k, k, k, cin, features).
  """

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    k = (self.kernel,) * 3
    w = self.param('kernel', _kaiming_normal(cin * math.prod(k)), (*k, cin, self.features))
    b = self.param('bias', nn.initializers.zeros, (self.features,))
    x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
    # large_kernel: lax outside a spatially partitioned step (layers.conv).
    y = layers.conv(x, w, (self.padding,) * 3, (self.stride,) * 3, large_kernel=True)
    return y + b


class ContBatchNorm(nn.Module):
  """vnet.pytorch `ContBatchNorm3d`: batch statistics in every mode.

  `x [B, D, H, W, C]` is normalised with the batch mean and biased variance over (B, D, H, W),
  eps 1e-5, then scaled by `scale` and shifted by `bias`. Running stats (batch_stats `mean`,
  `var`, never read) follow torch: mean <- 0.9 mean + 0.1 batch_mean, var <- 0.9 var + 0.1
  unbiased batch_var, updated only when the collection is mutable and not while initialising.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    n = x.size // c
    if n < 2:
      raise ValueError(
        f'ContBatchNorm {self.name}: batch statistics need more than one value per '
        f'channel, got input shape {x.shape} (the bottleneck is 1/16 of each '
        'spatial size)'
      )
    sdt = jnp.promote_types(jnp.result_type(x, scale), jnp.float32)
    xs = x.astype(sdt)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(xs, axes)
    var = jnp.mean(jnp.square(xs - mean), axes)
    if self.is_mutable_collection('batch_stats') and not self.is_initializing():
      m = self.momentum
      ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
      ra_var.value = ((1 - m) * ra_var.value + m * var * (n / (n - 1))).astype(ra_var.value.dtype)
    y = (xs - mean) * lax.rsqrt(var + self.epsilon) * scale.astype(sdt) + bias.astype(sdt)
    return y.astype(self.dtype or x.dtype)


class PReLU(nn.Module):
  """torch `PReLU(C)`: max(0, x) + a_c min(0, x), one slope per channel (param `slope`, init 0.25)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],))
    x, a = nn.dtypes.promote_dtype(x, a, dtype=self.dtype)
    return jnp.where(x >= 0, x, a * x)


class Dropout3d(nn.Module):
  """torch `Dropout3d(rate)` on `[B, D, H, W, C]`: keeps or zeroes whole (sample, channel) maps,
  scaling kept ones by 1/(1-rate); identity when not training. `mask` ([B, C] of 0/1) replaces
  the random draw (replay of a recorded torch mask)."""

  rate: float

  @nn.compact
  def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Array:
    if not train or self.rate == 0.0:
      return x
    if mask is None:
      keep = jax.random.bernoulli(
        self.make_rng('dropout'), 1.0 - self.rate, (x.shape[0], x.shape[-1])
      )
    else:
      if tuple(mask.shape) != (x.shape[0], x.shape[-1]):
        raise ValueError(
          f'Dropout3d {self.name}: mask shape {tuple(mask.shape)} does not match '
          f'(batch, channels) = {(x.shape[0], x.shape[-1])}'
        )
      keep = mask
    scale = (keep.astype(x.dtype) / (1.0 - self.rate))[:, None, None, None, :]
    return x * scale


class LUConv(nn.Module):
  """PReLU(BN(conv 5x5x5, padding 2)) at constant width (upstream `LUConv`)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = Conv3d(x.shape[-1], 5, padding=2, dtype=self.dtype, name='conv1')(x)
    return PReLU(dtype=self.dtype, name='relu1')(ContBatchNorm(dtype=self.dtype, name='bn1')(y))


class VNetMilletari(nn.Module):
  """The Milletari V-Net: `[B, D, H, W, 1]` -> logits `[B, D, H, W, n_classes]` (module doc).

  Attributes:
    n_filters: channels of the first stage (16 in the paper and upstream).
    n_classes: output channels (2 upstream).
    dropout_rate: the Dropout3d probability (0.5 upstream).
    literal_batch_repeat: reproduce the 2017 input transition that mixes the samples of a batch.
    dtype: compute dtype (parameters stay float32 unless the caller passes float64 ones); the
      logits come back in at least float32.
  """

  n_filters: int = 16
  n_classes: int = 2
  dropout_rate: float = 0.5
  literal_batch_repeat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, dropout_masks: Mapping[str, Array] | None = None
  ) -> Array:
    """`dropout_masks`: torch module name (e.g. 'up_tr64.do2') -> [B, C] mask to replay."""
    if x.ndim != 5 or x.shape[-1] != 1:
      raise ValueError(f'VNetMilletari: expected input [B, D, H, W, 1], got shape {x.shape}')
    if any(s % 16 for s in x.shape[1:4]):
      raise ValueError(f'VNetMilletari: spatial sizes {x.shape[1:4]} must all be divisible by 16')
    masks = dict(dropout_masks or {})
    known = {f'{n}.do1' for n, _, d in DOWN_STAGES + UP_STAGES if d}
    known |= {f'{n}.do2' for n, _, _ in UP_STAGES}
    if set(masks) - known:
      raise ValueError(
        f'VNetMilletari: unknown dropout modules {sorted(set(masks) - known)}; '
        f'known: {sorted(known)}'
      )
    dt = self.dtype

    def drop(name, h):
      return Dropout3d(self.dropout_rate, name=name.replace('.', '_'))(h, train, masks.get(name))

    def residual_stage(prefix, h, n_convs):
      for k in range(n_convs):
        h = LUConv(dtype=dt, name=f'{prefix}_ops_{k}')(h)
      return h

    f = self.n_filters
    # Input transition.
    y = Conv3d(f, 5, padding=2, dtype=dt, name='in_tr_conv1')(x)
    y = ContBatchNorm(dtype=dt, name='in_tr_bn1')(y)
    y = PReLU(dtype=dt, name='in_tr_relu1')(y + self._repeat_input(x.astype(y.dtype), f))
    skips = [y]
    for i, (name, n_convs, has_dropout) in enumerate(DOWN_STAGES):
      down = Conv3d(f * 2 ** (i + 1), 2, stride=2, dtype=dt, name=f'{name}_down_conv')(y)
      down = PReLU(dtype=dt, name=f'{name}_relu1')(
        ContBatchNorm(dtype=dt, name=f'{name}_bn1')(down)
      )
      h = drop(f'{name}.do1', down) if has_dropout else down
      y = PReLU(dtype=dt, name=f'{name}_relu2')(residual_stage(name, h, n_convs) + down)
      skips.append(y)
    for i, (name, n_convs, has_dropout) in enumerate(UP_STAGES):
      out_c = f * 2 ** (4 - i)
      skip = drop(f'{name}.do2', skips[3 - i])
      h = drop(f'{name}.do1', y) if has_dropout else y
      u = layers.UpConv2x(out_c // 2, torch_init=True, dtype=dt, name=f'{name}_up_conv')(h)
      u = PReLU(dtype=dt, name=f'{name}_relu1')(ContBatchNorm(dtype=dt, name=f'{name}_bn1')(u))
      cat = jnp.concatenate([u, skip], axis=-1)
      y = PReLU(dtype=dt, name=f'{name}_relu2')(residual_stage(name, cat, n_convs) + cat)
    # Output transition.
    y = Conv3d(2, 5, padding=2, dtype=dt, name='out_tr_conv1')(y)
    y = PReLU(dtype=dt, name='out_tr_relu1')(ContBatchNorm(dtype=dt, name='out_tr_bn1')(y))
    logits = Conv3d(self.n_classes, 1, dtype=dt, name='out_tr_conv2')(y)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

  def _repeat_input(self, x: Array, channels: int) -> Array:
    """`[B, D, H, W, 1]` -> `[B, D, H, W, channels]` added in the input transition."""
    if not self.literal_batch_repeat:
      return jnp.broadcast_to(x, (*x.shape[:-1], channels))
    b = x.shape[0]
    # torch.cat([x]*C, 0) viewed as (B, C, ...): flat index b*C + c reads x[(b*C + c) mod B].
    src = (jnp.arange(b)[:, None] * channels + jnp.arange(channels)[None, :]) % b
    return jnp.moveaxis(x[..., 0][src], 1, -1)


def _flax_path(torch_name: str) -> tuple[str, tuple[str, ...]]:
  """(collection, path) of a torch state_dict name: `stage.layer` -> module `stage_layer`,
  `stage.ops.k.layer` -> module `stage_ops_k`, submodule `layer`."""
  parts = torch_name.split('.')
  stage, layer, leaf = parts[0], parts[-2], parts[-1]
  mods = (f'{stage}_ops_{parts[2]}', layer) if parts[1] == 'ops' else (f'{stage}_{layer}',)
  if layer.startswith('relu'):
    return 'params', mods + ('slope',)
  if layer == 'bn1':
    if leaf.startswith('running_'):
      return 'batch_stats', mods + (leaf[len('running_') :],)
    return 'params', mods + ({'weight': 'scale', 'bias': 'bias'}[leaf],)
  return 'params', mods + ({'weight': 'kernel', 'bias': 'bias'}[leaf],)


def torch_key_map(**unused) -> torch_keys.KeyMap:
  """torch state_dict name -> `torch_keys.Entry` of `VNetMilletari` at any width (the names do
  not depend on it). Flax module names are the torch module names with '.' -> '_'."""
  del unused
  conv = torch_keys.conv_perm(3)
  up = torch_keys.conv_transpose_perm(3)
  names = []

  def bn(prefix):
    names.extend(f'{prefix}.bn1.{k}' for k in ('weight', 'bias', 'running_mean', 'running_var'))

  def luconvs(prefix, n):
    for k in range(n):
      names.extend(
        [
          f'{prefix}.ops.{k}.relu1.weight',
          f'{prefix}.ops.{k}.conv1.weight',
          f'{prefix}.ops.{k}.conv1.bias',
        ]
      )
      bn(f'{prefix}.ops.{k}')

  names += ['in_tr.conv1.weight', 'in_tr.conv1.bias', 'in_tr.relu1.weight']
  bn('in_tr')
  for name, n_convs, _ in DOWN_STAGES:
    names += [
      f'{name}.down_conv.weight',
      f'{name}.down_conv.bias',
      f'{name}.relu1.weight',
      f'{name}.relu2.weight',
    ]
    bn(name)
    luconvs(name, n_convs)
  for name, n_convs, _ in UP_STAGES:
    names += [
      f'{name}.up_conv.weight',
      f'{name}.up_conv.bias',
      f'{name}.relu1.weight',
      f'{name}.relu2.weight',
    ]
    bn(name)
    luconvs(name, n_convs)
  names += [
    'out_tr.conv1.weight',
    'out_tr.conv1.bias',
    'out_tr.relu1.weight',
    'out_tr.conv2.weight',
    'out_tr.conv2.bias',
  ]
  bn('out_tr')
  out = {}
  for name in names:
    collection, path = _flax_path(name)
    perm = None
    if path[-1] == 'kernel':
      perm = up if name.endswith('.up_conv.weight') else conv
    out[name] = torch_keys.Entry(collection, path, perm)
  return out


def example_shape(**unused) -> tuple[int, ...]:
  """The smallest valid input (variables' shapes do not depend on it): 32^3 keeps the bottleneck
  BN at more than one value per channel for batch 1."""
  del unused
  return (1, 32, 32, 32, 1)


# Registered in jaxseg.models.torch_import.
TORCH_MAP = torch_keys.TorchMap(torch_key_map, example_shape)
