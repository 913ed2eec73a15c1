"""The SSL4MIS / PyMIC 2D UNet of the ACDC semi-supervised literature (BCP, CML, SSL4MIS baselines).

Ports (fresh code; numbers checked against the fixtures BCP_UNet2d.npz and CML_UNet2d.npz, docs/parity.md):
* `UNet2d` ('unet2d'): `DeepMed-Lab-ECNU/BCP: code/networks/unet.py` `UNet_2d` (what `BCP_net`
  builds; the same blocks as `HiLab-git/SSL4MIS: code/networks/unet.py` `UNet`). Returns logits.
* `CMLUNet2d` ('cml_unet2d'): `SongwuJob/CML: code/networks/unet.py` `UNet`, with its upstream
  wiring reproduced by default: ONE encoder (assigned twice upstream) run twice, and `decoder1` run on
  both passes; `decoder2` (transposed-conv up-sampling) is built but never used. Returns
  (seg1, seg2, emb1, emb2), emb = the encoder bottleneck.

Blocks (channels-last, f = feature_chns):
  ConvBlock(c, p): Conv 3x3 (pad 1, bias) -> BN -> LeakyReLU(0.01) -> Dropout(p) (element-wise)
    -> Conv 3x3 -> BN -> LeakyReLU.
  Encoder: in_conv ConvBlock(f0, p0); downK = MaxPool 2x2 -> ConvBlock(fK, pK), K = 1..4.
  UpBlock(c_lo): up_type 1: Conv 1x1 (c_hi -> c_lo) -> bilinear x2 with align_corners=True;
    up_type 0: ConvTranspose 2x2 stride 2 (c_hi -> c_lo); then concat [skip, up] (skip first)
    -> ConvBlock(c_lo, 0.0).
  Decoder: up1..up4 -> out_conv Conv 3x3 (pad 1) to n_classes.

Parameter tree (torch name -> flax path; `torch_key_map` at the end of this file maps them):
  <enc>.in_conv.conv_conv.{0,1,4,5}          -> <enc>/in_conv/{conv0,bn0,conv1,bn1}
  <enc>.downK.maxpool_conv.1.conv_conv.*     -> <enc>/downK/...
  <dec>.upK.conv1x1 | .up | .conv.conv_conv.* -> <dec>/upK/{conv1x1 | up | conv/...}
  <dec>.out_conv                              -> <dec>/out_conv
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models import resize
from jaxseg.models import torch_keys

Array = jax.Array

FEATURE_CHNS = (16, 32, 64, 128, 256)
DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
UP_TYPES = (0, 1)  # 0: transposed conv; 1: 1x1 conv + bilinear (align_corners=True)


class ConvBlock(nn.Module):
  """Two [Conv 3x3 -> BN -> LeakyReLU] stages with element-wise dropout between them.

  `[B, H, W, cin]` -> `[B, H, W, features]` (upstream `ConvBlock`).
  """

  features: int
  dropout_rate: float = 0.0
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, use_dropout: bool = True) -> Array:
    x = layers.Conv(
      self.features, (3, 3), padding=1, torch_init=self.torch_init, dtype=self.dtype, name='conv0'
    )(x)
    x = layers.BatchNorm(dtype=self.dtype, name='bn0')(x, train)
    x = nn.leaky_relu(x, 0.01)
    if self.dropout_rate > 0 and train and use_dropout:
      x = nn.Dropout(self.dropout_rate, name='dropout')(x, deterministic=False)
    x = layers.Conv(
      self.features, (3, 3), padding=1, torch_init=self.torch_init, dtype=self.dtype, name='conv1'
    )(x)
    x = layers.BatchNorm(dtype=self.dtype, name='bn1')(x, train)
    return nn.leaky_relu(x, 0.01)


class Encoder(nn.Module):
  """`[B, H, W, cin]` -> [x0 .. x4], xK `[B, H/2^K, W/2^K, feature_chns[K]]` (upstream `Encoder`)."""

  feature_chns: Sequence[int] = FEATURE_CHNS
  dropout: Sequence[float] = DROPOUT
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, use_dropout: bool = True) -> list[Array]:
    common = dict(torch_init=self.torch_init, dtype=self.dtype)
    feats = [
      ConvBlock(self.feature_chns[0], self.dropout[0], name='in_conv', **common)(
        x, train, use_dropout
      )
    ]
    for k in range(1, 5):
      x = nn.max_pool(feats[-1], (2, 2), (2, 2), 'VALID')
      feats.append(
        ConvBlock(self.feature_chns[k], self.dropout[k], name=f'down{k}', **common)(
          x, train, use_dropout
        )
      )
    return feats


class UpBlock(nn.Module):
  """Up-sample `x [B, h, w, c_hi]` to the skip's resolution, concat [skip, up], ConvBlock.

  Returns `[B, 2h, 2w, features]` (upstream `UpBlock`, dropout 0).
  """

  features: int
  up_type: int = 1
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, skip: Array, train: bool = False) -> Array:
    c_lo = skip.shape[-1]
    if self.up_type == 1:
      x = layers.Conv(c_lo, (1, 1), torch_init=self.torch_init, dtype=self.dtype, name='conv1x1')(x)
      x = resize.upsample2x_linear_align_corners(x)
    elif self.up_type == 0:
      x = layers.UpConv2x(c_lo, torch_init=self.torch_init, dtype=self.dtype, name='up')(x)
    else:
      raise ValueError(f'UpBlock: up_type must be one of {UP_TYPES}, got {self.up_type}')
    x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
    return ConvBlock(self.features, 0.0, torch_init=self.torch_init, dtype=self.dtype, name='conv')(
      x, train
    )


class Decoder(nn.Module):
  """[x0 .. x4] -> (logits `[B, H, W, n_classes]`, last feature map `[B, H, W, feature_chns[0]]`)."""

  n_classes: int = 4
  up_type: int = 1
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[Array], train: bool = False) -> tuple[Array, Array]:
    x = feats[4]
    for k, skip in zip(range(1, 5), (feats[3], feats[2], feats[1], feats[0])):
      x = UpBlock(
        skip.shape[-1], self.up_type, torch_init=self.torch_init, dtype=self.dtype, name=f'up{k}'
      )(x, skip, train)
    logits = layers.Conv(
      self.n_classes,
      (3, 3),
      padding=1,
      torch_init=self.torch_init,
      dtype=self.dtype,
      name='out_conv',
    )(x)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), x


def _check(name: str, x: Array, n_channels: int, feature_chns, dropout, up_type) -> None:
  if len(feature_chns) != 5 or len(dropout) != 5:
    raise ValueError(
      f'{name}: feature_chns and dropout need 5 entries, got {tuple(feature_chns)} '
      f'and {tuple(dropout)}'
    )
  if any(not 0.0 <= p < 1.0 for p in dropout):
    raise ValueError(f'{name}: dropout rates must be in [0, 1), got {tuple(dropout)}')
  if up_type not in UP_TYPES:
    raise ValueError(f'{name}: up_type must be 0 (transposed conv) or 1 (bilinear), got {up_type}')
  if x.ndim != 4 or x.shape[-1] != n_channels:
    raise ValueError(
      f'{name}: expected input [B, H, W, {n_channels}] (channels-last), got shape {x.shape}'
    )
  if any(s % 16 for s in x.shape[1:3]):
    raise ValueError(
      f'{name}: spatial dims (H, W) = {x.shape[1:3]} of input shape {x.shape} must '
      'be divisible by 16'
    )


class UNet2d(nn.Module):
  """BCP `UNet_2d` / SSL4MIS `UNet`: `x [B, H, W, n_channels]` -> logits `[B, H, W, n_classes]`.

  H, W divisible by 16. The unused BCP heads (projection/prediction/class selectors) are not built:
  no loss uses them (the torch import accepts and ignores their keys: `TORCH_IGNORED_KEYS`).

  Attributes:
    n_channels: input channels (upstream in_chns).
    n_classes: output classes (upstream class_num; 4 on ACDC).
    feature_chns: the 5 stage widths (upstream fixed [16, 32, 64, 128, 256]).
    dropout: encoder dropout per stage (element-wise, train only; upstream [0.05, .., 0.5]).
    up_type: 1 = 1x1 conv + bilinear x2 (align_corners=True, upstream), 0 = transposed conv.
    torch_init: torch default init for conv weights and biases.
    dtype: compute dtype (params stay float32); logits and features come back in at least
      float32.

  Call: `apply(variables, x, train=False, turnoff_drop=False, return_features=False)`. train=True
  uses batch-statistics BN (mutable=['batch_stats']) and dropout from the 'dropout' rng stream
  unless turnoff_drop. return_features=True returns `(logits, {'x4': bottleneck [B, H/16, W/16,
  f4], 'last': decoder output before out_conv [B, H, W, f0]})` (the second output of upstream
  `UNet.forward`).
  """

  n_channels: int = 1
  n_classes: int = 4
  feature_chns: Sequence[int] = FEATURE_CHNS
  dropout: Sequence[float] = DROPOUT
  up_type: int = 1
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, turnoff_drop: bool = False, return_features: bool = False
  ):
    _check('UNet2d', x, self.n_channels, self.feature_chns, self.dropout, self.up_type)
    common = dict(torch_init=self.torch_init, dtype=self.dtype)
    feats = Encoder(tuple(self.feature_chns), tuple(self.dropout), name='encoder', **common)(
      x, train, not turnoff_drop
    )
    logits, last = Decoder(self.n_classes, self.up_type, name='decoder', **common)(feats, train)
    if return_features:
      return logits, {'x4': feats[4].astype(logits.dtype), 'last': last.astype(logits.dtype)}
    return logits


class CMLUNet2d(nn.Module):
  """CML's ACDC UNet: `x [B, H, W, n_channels]` -> (seg1, seg2, emb1, emb2).

  seg `[B, H, W, n_classes]` logits, emb `[B, H/16, W/16, feature_chns[4]]` (encoder bottleneck after
  its dropout).

  shared_branches=True (default, upstream as released): a single `encoder` runs twice and
  `decoder1` (bilinear) decodes both passes, so the two branches differ only by their dropout masks
  (identical in eval); in train mode every encoder/decoder1 BN updates its running stats twice per
  call, the second pass starting from the first pass's update, as torch. `decoder2` (transposed
  conv) exists in the parameters (upstream state_dict) but is never run; it gets no gradient.
  shared_branches=False: the intended heterogeneous network of the paper: `encoder` + `decoder1`
  and a second `encoder2` + `decoder2` (not in any upstream checkpoint).

  Attributes and call arguments as `UNet2d` (up types are fixed: decoder1 bilinear, decoder2
  transposed conv), plus shared_branches. The embeddings come back in at least float32, as the
  logits.
  """

  n_channels: int = 1
  n_classes: int = 4
  feature_chns: Sequence[int] = FEATURE_CHNS
  dropout: Sequence[float] = DROPOUT
  shared_branches: bool = True
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, turnoff_drop: bool = False):
    _check('CMLUNet2d', x, self.n_channels, self.feature_chns, self.dropout, 1)
    common = dict(torch_init=self.torch_init, dtype=self.dtype)
    use_dropout = not turnoff_drop
    encoder = Encoder(tuple(self.feature_chns), tuple(self.dropout), name='encoder', **common)
    decoder1 = Decoder(self.n_classes, up_type=1, name='decoder1', **common)
    decoder2 = Decoder(self.n_classes, up_type=0, name='decoder2', **common)
    feats1 = encoder(x, train, use_dropout)
    if self.shared_branches:
      feats2 = encoder(x, train, use_dropout)  # a second pass: its own dropout masks
      seg1, _ = decoder1(feats1, train)
      seg2, _ = decoder1(feats2, train)
      if self.is_initializing():
        decoder2(feats1, train)  # only so that its (unused) parameters exist, as upstream
    else:
      feats2 = Encoder(tuple(self.feature_chns), tuple(self.dropout), name='encoder2', **common)(
        x, train, use_dropout
      )
      seg1, _ = decoder1(feats1, train)
      seg2, _ = decoder2(feats2, train)
    return seg1, seg2, feats1[4].astype(seg1.dtype), feats2[4].astype(seg2.dtype)


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---

# Keys of BCP's UNet_2d heads that no loss uses (DeepMed-Lab-ECNU/BCP code/networks/unet.py:
# projection_head, prediction_head, contrastive_class_selector_{c}, ..._memory{c}, each a
# Sequential of Linear / BatchNorm1d). jaxseg's UNet2d does not build them: the importer accepts and
# ignores exactly these keys (anything else unexpected is still an error).
TORCH_IGNORED_KEYS = re.compile(
  r'(projection_head|prediction_head|contrastive_class_selector_(memory)?\d+)\.\d+\.'
  r'(weight|bias|running_mean|running_var|num_batches_tracked)'
)


def _conv_block_entries(torch_prefix: str, path: tuple[str, ...]) -> torch_keys.KeyMap:
  """SSL4MIS ConvBlock: Sequential [Conv, BN, LeakyReLU, Dropout, Conv, BN, LeakyReLU]."""
  out = {}
  for k, (conv_i, bn_i) in enumerate(((0, 1), (4, 5))):
    out.update(
      torch_keys.conv_entries(
        f'{torch_prefix}.conv_conv.{conv_i}', path + (f'conv{k}',), torch_keys.conv_perm(2)
      )
    )
    out.update(
      torch_keys.norm_entries('batchnorm', f'{torch_prefix}.conv_conv.{bn_i}', path + (f'bn{k}',))
    )
  return out


def _encoder_entries(prefix: str) -> torch_keys.KeyMap:
  out = _conv_block_entries(f'{prefix}.in_conv', (prefix, 'in_conv'))
  for k in range(1, 5):
    out.update(_conv_block_entries(f'{prefix}.down{k}.maxpool_conv.1', (prefix, f'down{k}')))
  return out


def _decoder_entries(prefix: str, up_type: int) -> torch_keys.KeyMap:
  out = {}
  for k in range(1, 5):
    t, path = f'{prefix}.up{k}', (prefix, f'up{k}')
    if up_type == 1:
      out.update(
        torch_keys.conv_entries(f'{t}.conv1x1', path + ('conv1x1',), torch_keys.conv_perm(2))
      )
    else:
      out.update(
        torch_keys.conv_entries(f'{t}.up', path + ('up',), torch_keys.conv_transpose_perm(2))
      )
    out.update(_conv_block_entries(f'{t}.conv', path + ('conv',)))
  out.update(
    torch_keys.conv_entries(f'{prefix}.out_conv', (prefix, 'out_conv'), torch_keys.conv_perm(2))
  )
  return out


def torch_key_map(up_type: int = 1, **unused) -> torch_keys.KeyMap:
  """BCP UNet_2d / SSL4MIS UNet (`UNet2d`): `encoder.*`, `decoder.*`."""
  del unused
  return {**_encoder_entries('encoder'), **_decoder_entries('decoder', up_type)}


def cml_torch_key_map(shared_branches: bool = True, **unused) -> torch_keys.KeyMap:
  """CML's ACDC UNet (SongwuJob/CML code/networks/unet.py, `CMLUNet2d`): one `encoder`, `decoder1`
  (bilinear), `decoder2` (transposed conv, never run upstream but in its state_dict); `encoder2`
  only for the heterogeneous shared_branches=False variant (no upstream checkpoint has it)."""
  del unused
  out = {
    **_encoder_entries('encoder'),
    **_decoder_entries('decoder1', 1),
    **_decoder_entries('decoder2', 0),
  }
  if not shared_branches:
    out.update(_encoder_entries('encoder2'))
  return out


TORCH_MAP = torch_keys.TorchMap(torch_key_map, torch_keys.image_example_shape, TORCH_IGNORED_KEYS)
CML_TORCH_MAP = torch_keys.TorchMap(cml_torch_key_map, torch_keys.image_example_shape)
