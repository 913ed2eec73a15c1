"""BCP's VNet: the UA-MT VNet split into Encoder / Decoder submodules, plus a pooled bottleneck.

Port of `DeepMed-Lab-ECNU/BCP: code/networks/VNet.py` `VNet` (commit 7879f98; parity fixture
BCP_VNet.npz, docs/parity.md). Spec docs/methods/bcp.md §1a. The convolutional topology is the UA-MT
VNet's (`jaxseg.models.vnet.Encoder` / `Decoder`): ConvBlock stages 1,2,3,3,3 / 3,3,2,1, k2 s2
down / transposed-up convs, additive skips, BN + ReLU, 1x1x1 out conv. Differences from `VNet`:
  * parameters live under `encoder/` and `decoder/` (torch `encoder.block_one...`,
    `decoder.block_five_up...`, `decoder.out_conv`);
  * two Dropout3d modules (`encoder.dropout` on x5, `decoder.dropout` on x9), each p = 0.5;
  * `forward` also returns MaxPool3d(3, stride 2) of the (dropped-out) x5. BCP never uses it in a
    loss; here it is computed only when asked (`return_pooled=True`), since it needs a bottleneck of
    at least 3 voxels per axis (input sides >= 48) and the tests train on 16^3 patches;
  * the unused heads (`projection_head`, `prediction_head`, `contrastive_class_selector_{c}`,
    `contrastive_class_selector_memory{c}`: Linear 16->32 / 32->32 (-> 1), BatchNorm1d, ReLU or
    LeakyReLU(0.2)) get parameters only with `with_heads=True` (checkpoint round trips); no forward
    runs them, as upstream. Without them the torch import drops those keys.

Parameter tree: encoder/block_X/{convK,bnK}, encoder/block_X_dw/{conv0,bn0}, decoder/block_X_up/...,
decoder/block_nine, decoder/out_conv; heads: <head>/{fc0, bn, fc1}.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models import torch_keys
from jaxseg.models import unet2d
from jaxseg.models import vnet
from jaxseg.models.vnet import Decoder
from jaxseg.models.vnet import Encoder
from jaxseg.models.vnet import check_input
from jaxseg.models.vnet import part_kwargs

Array = jax.Array

# Upstream hard-codes the head widths (dim_in = 16, feat_dim = 32) whatever n_filters is.
HEAD_DIM_IN = 16
HEAD_FEAT_DIM = 32
HEAD_CLASSES = 2  # upstream `for class_c in range(2)`


def head_names() -> tuple[str, ...]:
  """The unused heads' module names, in upstream construction order."""
  return (
    ('projection_head', 'prediction_head')
    + tuple(f'contrastive_class_selector_{c}' for c in range(HEAD_CLASSES))
    + tuple(f'contrastive_class_selector_memory{c}' for c in range(HEAD_CLASSES))
  )


class _Head(nn.Module):
  """Linear -> BatchNorm1d -> (Leaky)ReLU -> Linear (never run by a forward; parameters only)."""

  features: int
  out_features: int
  leaky: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = lambda n, name, fan_in: nn.Dense(
      n, kernel_init=layers.torch_uniform(fan_in), bias_init=layers.torch_uniform(fan_in), name=name
    )
    x = dense(self.features, 'fc0', x.shape[-1])(x)
    x = layers.BatchNorm(name='bn')(x, False)
    x = nn.leaky_relu(x, 0.2) if self.leaky else nn.relu(x)
    return dense(self.out_features, 'fc1', self.features)(x)


class BCPVNet(nn.Module):
  """BCP VNet: `x [B, D, H, W, n_channels]` -> logits `[B, D, H, W, n_classes]`.

  Attributes:
    n_channels, n_classes, n_filters, normalization, dropout_rate, torch_init, fast_updown,
      remat, dtype: as `jaxseg.models.vnet.VNet`.
    has_dropout: Dropout3d(p) on x5 (encoder) and x9 (decoder) in train mode (upstream
      mode="train"; test_LA.py builds it without).
    with_heads: also create the parameters of the unused projection / prediction / class-selector
      heads (upstream state_dict compatibility). They never enter a forward.

  Call: `apply(variables, x, train=False, turnoff_drop=False, return_pooled=False)`; with
  return_pooled=True returns `(logits, pooled)`, pooled = max_pool(x5, 3, stride 2, VALID)
  `[B, (D/16 - 3)//2 + 1, ..., 16f]` (upstream's second output; needs D, H, W >= 48).
  """

  n_channels: int = 1
  n_classes: int = 2
  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  with_heads: bool = False
  torch_init: bool = True
  fast_updown: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, turnoff_drop: bool = False, return_pooled: bool = False
  ):
    check_input('BCPVNet', x, self.n_channels, self.normalization, self.dropout_rate)
    use_dropout = not turnoff_drop
    feats = Encoder(name='encoder', **part_kwargs(self))(x, train, use_dropout)
    logits = Decoder(n_classes=self.n_classes, name='decoder', **part_kwargs(self))(
      feats, train, use_dropout
    )
    if self.with_heads and self.is_initializing():
      # Run on a dummy batch at init only, so that the parameters exist; never at apply.
      dummy = jnp.zeros((2, HEAD_DIM_IN), jnp.float32)
      feat = _Head(HEAD_FEAT_DIM, HEAD_FEAT_DIM, leaky=False, name='projection_head')(dummy)
      _Head(HEAD_FEAT_DIM, HEAD_FEAT_DIM, leaky=False, name='prediction_head')(feat)
      for name in head_names()[2:]:
        _Head(HEAD_FEAT_DIM, 1, leaky=True, name=name)(feat)
    if not return_pooled:
      return logits
    x5 = feats[4]
    if any(s < 3 for s in x5.shape[1:4]):
      raise ValueError(
        f'BCPVNet: the pooled output needs a bottleneck of >= 3 voxels per axis '
        f'(input sides >= 48), got bottleneck {x5.shape[1:4]} for input {x.shape}'
      )
    pooled = nn.max_pool(x5, (3, 3, 3), strides=(2, 2, 2), padding='VALID')
    return logits, pooled.astype(jnp.promote_types(pooled.dtype, jnp.float32))


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---


def torch_key_map(
  normalization: str = 'batchnorm', with_heads: bool = False, **unused
) -> torch_keys.KeyMap:
  """BCP's VNet (DeepMed-Lab-ECNU/BCP code/networks/VNet.py): `encoder.block_one..block_five`,
  `decoder.block_five_up..block_nine`, `decoder.out_conv` (VNet block layout); with_heads adds the
  unused Linear/BatchNorm1d heads (`<head>.0` Linear -> fc0, `.1` BN -> bn, `.3` Linear -> fc1).
  Without them the heads' keys are dropped on import (`TORCH_MAP.ignored`)."""
  del unused
  encoder_blocks = {name for name, _, _ in vnet.VNET_BLOCKS[: vnet.N_ENCODER_BLOCKS]}
  out = {}
  for part in ('encoder', 'decoder'):
    entries = vnet.vnet_block_entries(normalization, prefix=f'{part}.', path=(part,))
    out.update(
      {k: e for k, e in entries.items() if (e.path[1] in encoder_blocks) == (part == 'encoder')}
    )
  out.update(
    torch_keys.conv_entries('decoder.out_conv', ('decoder', 'out_conv'), torch_keys.conv_perm(3))
  )
  if with_heads:
    for head in head_names():
      out.update(torch_keys.conv_entries(f'{head}.0', (head, 'fc0'), torch_keys.LINEAR_PERM))
      out.update(torch_keys.norm_entries('batchnorm', f'{head}.1', (head, 'bn')))
      out.update(torch_keys.conv_entries(f'{head}.3', (head, 'fc1'), torch_keys.LINEAR_PERM))
  return out


# The heads carry the same names as BCP's UNet_2d heads.
TORCH_MAP = torch_keys.TorchMap(
  torch_key_map, torch_keys.volume_example_shape, unet2d.TORCH_IGNORED_KEYS
)
