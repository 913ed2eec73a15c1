"""ResVNet: MCF's second network, a 3D ResNet-34 encoder with the UA-MT VNet decoder.

Port of `WYC-321/MCF: code/networks/ResNet34.py` `Resnet34` with its encoder from
`code/networks/resnet.py` `resnet34()` (commit ad20659). Spec: docs/methods/mcf.md §1b,
fixture MCF_ResVNet.npz (docs/parity.md).

Encoder (base width b = n_filters; upstream hard-codes 16 = the default n_filters, which the
decoder's additive skips require anyway):
  stem   Conv 7x7x7 (stride 1, padding 3, no bias) -> BN -> ReLU       x1 [B, D, H, W, b]
  layer1 3 BasicBlocks, 2b channels, first stride 2                   x2 [.., D/2, .., 2b]
  layer2 4 BasicBlocks, 4b, first stride 2                            x3 [.., D/4, .., 4b]
  layer3 6 BasicBlocks, 8b, first stride 2                            x4 [.., D/8, .., 8b]
  layer4 3 BasicBlocks, 16b, first stride 2                           x5 [.., D/16, .., 16b]
  (upstream defines a maxpool and an avgpool that the forward never uses: not ported.)
Decoder: the VNet decoder from block_five_up to out_conv with additive skips (`jaxseg.models.vnet`),
channel-wise dropout on x9 only (no dropout on the bottleneck, unlike VNet).

The encoder always uses BatchNorm (resnet.py hard-codes BatchNorm3d); `normalization` only
selects the decoder's norm, as upstream. Every k3 convolution pads 1 symmetrically (also at
stride 2, where flax 'SAME' would pad (0, 1) and give other numbers: docs/parity.md "Layout conventions").

Parameter tree (torch name -> flax path, `torch_key_map` at the end of this file):
  resnet_encoder.conv1 / .bn1                 -> resnet_encoder/conv1, resnet_encoder/bn1
  resnet_encoder.layer{i}.{j}.conv{k} / .bn{k} -> resnet_encoder/layer{i}_{j}/conv{k}, bn{k}
  resnet_encoder.layer{i}.0.downsample.0 / .1  -> resnet_encoder/layer{i}_0/downsample_conv, _bn
  decoder blocks and out_conv                  -> as in VNet

`remat=True` (config `model.remat`) rematerialises every BasicBlock and every decoder block
(`nn.remat`, as `jaxseg.models.vnet`): same parameters and numbers, less activation memory, one
more forward of each block in the backward pass.

Init: `init` gives torch-default draws (U(+-1/sqrt(fan_in)), `torch_init=True`). Upstream MCF
then re-draws every conv and transposed-conv weight kaiming-normal (`Resnet34.__init_weight`, and
the same in MCF's vnet.py): `kaiming_normal_conv_kernels` does that on any VNet-family tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models import torch_keys
from jaxseg.models import vnet

Array = jax.Array

# BasicBlocks per layer of resnet34() (ResNet(BasicBlock, [3, 4, 6, 3])).
RESNET34_DEPTHS = (3, 4, 6, 3)
# The VNet decoder blocks ResVNet keeps (torch names), in forward order.
DECODER_BLOCKS = (
  'block_five_up',
  'block_six',
  'block_six_up',
  'block_seven',
  'block_seven_up',
  'block_eight',
  'block_eight_up',
  'block_nine',
)


class BasicBlock(nn.Module):
  """ResNet BasicBlock (expansion 1): `[B, *S, cin]` -> `[B, *S / strides, features]`.

  conv3 (stride, pad 1, no bias) -> BN -> ReLU -> conv3 (pad 1, no bias) -> BN, plus the residual
  (Conv 1x1x1 stride `strides` no bias -> BN when `downsample`), then ReLU.
  """

  features: int
  strides: int = 1
  downsample: bool = False
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    common = dict(use_bias=False, torch_init=self.torch_init, dtype=self.dtype)
    out = layers.Conv(
      self.features, (3, 3, 3), padding=1, strides=self.strides, name='conv1', **common
    )(x)
    out = nn.relu(layers.BatchNorm(dtype=self.dtype, name='bn1')(out, train))
    out = layers.Conv(self.features, (3, 3, 3), padding=1, name='conv2', **common)(out)
    out = layers.BatchNorm(dtype=self.dtype, name='bn2')(out, train)
    residual = x
    if self.downsample:
      residual = layers.Conv(
        self.features, (1, 1, 1), strides=self.strides, name='downsample_conv', **common
      )(x)
      residual = layers.BatchNorm(dtype=self.dtype, name='downsample_bn')(residual, train)
    return nn.relu(out + residual)


# `train` is argument 2 of __call__ (nn.remat counts `self`), a Python bool choosing code paths.
RematBasicBlock = nn.remat(BasicBlock, static_argnums=(2,))


class ResNetEncoder(nn.Module):
  """3D ResNet-34 trunk: `x [B, D, H, W, cin]` -> [x1, x2, x3, x4, x5] (see module docstring)."""

  width: int = 16
  depths: Sequence[int] = RESNET34_DEPTHS
  torch_init: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> list[Array]:
    x = layers.Conv(
      self.width,
      (7, 7, 7),
      padding=3,
      use_bias=False,
      torch_init=self.torch_init,
      dtype=self.dtype,
      name='conv1',
    )(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name='bn1')(x, train))
    features = [x]
    basic_block = RematBasicBlock if self.remat else BasicBlock
    for i, depth in enumerate(self.depths, start=1):
      planes = self.width * 2**i
      for j in range(depth):
        # resnet.py `_make_layer`: the first block of every layer (layer1 included) has stride 2,
        # so it always gets a downsample branch.
        first = j == 0
        x = basic_block(
          planes,
          strides=2 if first else 1,
          downsample=first,
          torch_init=self.torch_init,
          dtype=self.dtype,
          name=f'layer{i}_{j}',
        )(x, train)
      features.append(x)
    return features


class ResVNet(nn.Module):
  """MCF `Resnet34`: `x [B, D, H, W, n_channels]` -> logits `[B, D, H, W, n_classes]`.

  D, H, W must be divisible by 16. Same constructor arguments and call signature as
  `jaxseg.models.vnet.VNet` (so one config's `model.kwargs` builds both MCF networks).

  Attributes:
    n_channels: input channels (checked against the input).
    n_classes: output channels (raw logits).
    n_filters: base width f of encoder and decoder (16 upstream; channels f, 2f, 4f, 8f, 16f).
    normalization: the decoder's norm ('none' | 'batchnorm' | 'groupnorm' | 'instancenorm'); the
      encoder is always BatchNorm as upstream.
    has_dropout: channel-wise dropout (torch Dropout3d) on x9 in train mode.
    dropout_rate: its drop probability (0.5 upstream).
    depths: BasicBlocks per encoder layer ((3, 4, 6, 3) = ResNet-34, upstream).
    torch_init: torch default init draws instead of flax's.
    fast_updown: k2 s2 transposed convs as matmul + depth-to-space (same params and numbers).
    remat: recompute each block's activations in the backward pass (module docstring).
    dtype: compute dtype; logits come back in at least float32.

  Call: `apply(variables, x, train=False, turnoff_drop=False)`; train=True uses batch statistics
  (pass mutable=['batch_stats']) and, with has_dropout and not turnoff_drop, the 'dropout' rng.
  """

  n_channels: int = 1
  n_classes: int = 2
  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  depths: Sequence[int] = RESNET34_DEPTHS
  torch_init: bool = True
  fast_updown: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, turnoff_drop: bool = False) -> Array:
    if self.normalization not in layers.NORMS:
      raise ValueError(
        f'ResVNet: unknown normalization {self.normalization!r}; expected one of {layers.NORMS}'
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'ResVNet: dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if len(self.depths) != 4 or min(self.depths) < 1:
      raise ValueError(f'ResVNet: depths must be 4 positive block counts, got {self.depths}')
    if x.ndim != 5 or x.shape[-1] != self.n_channels:
      raise ValueError(
        f'ResVNet: expected input [B, D, H, W, {self.n_channels}] (channels-last), '
        f'got shape {x.shape}'
      )
    if any(s % 16 for s in x.shape[1:4]):
      raise ValueError(
        f'ResVNet: spatial dims (D, H, W) = {x.shape[1:4]} of input shape '
        f'{x.shape} must all be divisible by 16'
      )
    f = self.n_filters
    x1, x2, x3, x4, x5 = ResNetEncoder(
      f,
      tuple(self.depths),
      torch_init=self.torch_init,
      remat=self.remat,
      dtype=self.dtype,
      name='resnet_encoder',
    )(x, train)
    common = dict(normalization=self.normalization, torch_init=self.torch_init, dtype=self.dtype)
    conv_block, resample_block = vnet.blocks(self.remat)

    def up(name, features):
      return resample_block(features, True, fast=self.fast_updown, name=name, **common)

    x = up('block_five_up', 8 * f)(x5, train) + x4
    x = conv_block(3, 8 * f, name='block_six', **common)(x, train)
    x = up('block_six_up', 4 * f)(x, train) + x3
    x = conv_block(3, 4 * f, name='block_seven', **common)(x, train)
    x = up('block_seven_up', 2 * f)(x, train) + x2
    x = conv_block(2, 2 * f, name='block_eight', **common)(x, train)
    x = up('block_eight_up', f)(x, train) + x1
    x9 = conv_block(1, f, name='block_nine', **common)(x, train)
    if self.has_dropout and train and not turnoff_drop:
      x9 = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2, 3), name='dropout')(
        x9, deterministic=False
      )
    logits = layers.Conv(
      self.n_classes, (1, 1, 1), torch_init=self.torch_init, dtype=self.dtype, name='out_conv'
    )(x9)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def kaiming_normal_conv_kernels(params: Any, rng: jax.Array) -> Any:
  """Re-draws every conv kernel as torch `kaiming_normal_` (a=0, fan_in): N(0, 2 / fan_in).

  What MCF's `__init_weight` does to every Conv3d and ConvTranspose3d weight of both its networks
  (`WYC-321/MCF: code/networks/vnet.py`, `code/networks/ResNet34.py`); biases and BN affine
  parameters are left alone (torch default bias draws; BN 1 / 0 already). A kernel is a 5-D
  'kernel' leaf (*k, cin, cout); fan_in is cin * prod(k) for convolutions and, as torch computes
  it from dim 1 of a ConvTranspose weight (cin, cout, *k), cout * prod(k) for the transposed
  convolutions, which in the VNet family are the `*_up` blocks.

  Args:
    params: a VNet / ResVNet params tree (nested dicts).
    rng: key of one flat standard-normal draw that the kernels take consecutive slices of, in
      sorted path order (one RNG op: per-kernel draws cost seconds of XLA:CPU compile).

  Returns:
    The tree with its kernels replaced (same structure, shapes and dtypes).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  kernels = [p for p in sorted(flat) if p[-1] == 'kernel' and flat[p].ndim == 5]
  if not kernels:
    return params
  total = sum(flat[p].size for p in kernels)
  draw = jax.random.normal(rng, (total,), jnp.float32)
  offset = 0
  for path in kernels:
    leaf = flat[path]
    transposed = any(name.endswith('_up') for name in path[:-1])
    fan_in = math.prod(leaf.shape[:-2]) * (leaf.shape[-1] if transposed else leaf.shape[-2])
    piece = draw[offset : offset + leaf.size] * math.sqrt(2.0 / fan_in)
    flat[path] = piece.reshape(leaf.shape).astype(leaf.dtype)
    offset += leaf.size
  return flax.traverse_util.unflatten_dict(flat)


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---


def torch_key_map(normalization: str = 'batchnorm', depths=None, **unused) -> torch_keys.KeyMap:
  """MCF's Resnet34 (WYC-321/MCF code/networks/ResNet34.py, encoder code/networks/resnet.py):
  `resnet_encoder.*` (bias-free convs, BatchNorm whatever `normalization`) -> flax
  resnet_encoder/{conv1, bn1, layer{i}_{j}/{conv1, bn1, conv2, bn2, downsample_conv,
  downsample_bn}}; torch `layer{i}.{j}.downsample.0/.1` is the first block's shortcut. The decoder
  keeps the VNet names (block_five_up .. block_nine, out_conv)."""
  del unused
  enc = 'resnet_encoder'
  perm = torch_keys.conv_perm(3)

  def conv(torch_prefix, path):
    return {f'{torch_prefix}.weight': torch_keys.Entry('params', path + ('kernel',), perm)}

  out = conv(f'{enc}.conv1', (enc, 'conv1'))
  out.update(torch_keys.norm_entries('batchnorm', f'{enc}.bn1', (enc, 'bn1')))
  for i, depth in enumerate(depths or RESNET34_DEPTHS, start=1):
    for j in range(depth):
      t, path = f'{enc}.layer{i}.{j}', (enc, f'layer{i}_{j}')
      for k in (1, 2):
        out.update(conv(f'{t}.conv{k}', path + (f'conv{k}',)))
        out.update(torch_keys.norm_entries('batchnorm', f'{t}.bn{k}', path + (f'bn{k}',)))
      if j == 0:
        out.update(conv(f'{t}.downsample.0', path + ('downsample_conv',)))
        out.update(
          torch_keys.norm_entries('batchnorm', f'{t}.downsample.1', path + ('downsample_bn',))
        )
  decoder = set(DECODER_BLOCKS)
  out.update(
    {k: e for k, e in vnet.vnet_block_entries(normalization).items() if k.split('.')[0] in decoder}
  )
  out.update(torch_keys.conv_entries('out_conv', ('out_conv',), perm))
  return out


TORCH_MAP = torch_keys.TorchMap(torch_key_map, torch_keys.volume_example_shape)
