"""DTC's two-head VNet: a tanh level-set (signed distance) head and a segmentation head.

Port of `HiLab-git/DTC: code/networks/vnet_sdf.py` `VNet` (commit 2525b9c), built by
`code/train_la_dtc.py` as VNet(n_channels=1, n_classes=1, normalization='batchnorm',
has_dropout=True). Spec: docs/methods/dtc.md section 1.

The trunk is the UA-MT VNet (`jaxseg.models.vnet.VNet`, same blocks, same single Dropout3d on x5
and x9). Both heads are 1x1x1 convolutions (with bias) on the same x9 (after the decoder dropout):
  * `out_conv`  -> tanh -> out_tanh `[B, D, H, W, n_classes]` in (-1, 1): the level set / SDF;
  * `out_conv2` -> out_seg `[B, D, H, W, n_classes]`: segmentation logits (DTC applies a sigmoid).
Note upstream's naming: `out_conv` is the SDF head and `out_conv2` the segmentation head. The
trunk's own output conv *is* `out_conv`, so the parameter tree has exactly upstream's names
(block_X/conv{k}, block_X/bn{k}, out_conv, out_conv2), see `torch_key_map` below.

Call: `apply(variables, x, train=False, turnoff_drop=False)` returns the tuple
`(out_tanh, out_seg)`, SDF first, as upstream's forward. Both come back in at least float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models import torch_keys
from jaxseg.models import vnet
from jaxseg.models.vnet import VNet

Array = jax.Array


class VNetSDF(nn.Module):
  """`x [B, D, H, W, n_channels]` -> `(out_tanh, out_seg)`, each `[B, D, H, W, n_classes]`.

  Attributes are those of `jaxseg.models.vnet.VNet` (n_classes is 1 for DTC: one foreground
  channel per head).
  """

  n_channels: int = 1
  n_classes: int = 1
  n_filters: int = 16
  normalization: str = 'batchnorm'
  has_dropout: bool = False
  dropout_rate: float = 0.5
  torch_init: bool = True
  fast_updown: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.trunk = VNet(
      n_channels=self.n_channels,
      n_classes=self.n_classes,
      n_filters=self.n_filters,
      normalization=self.normalization,
      has_dropout=self.has_dropout,
      dropout_rate=self.dropout_rate,
      torch_init=self.torch_init,
      fast_updown=self.fast_updown,
      remat=self.remat,
      dtype=self.dtype,
    )
    # The trunk's variables live at this module's level (block_one, ..., out_conv), so the tree
    # reads like upstream's state_dict rather than trunk/....
    nn.share_scope(self, self.trunk)
    self.out_conv2 = layers.Conv(
      self.n_classes, (1, 1, 1), torch_init=self.torch_init, dtype=self.dtype
    )

  def __call__(
    self, x: Array, train: bool = False, turnoff_drop: bool = False
  ) -> tuple[Array, Array]:
    sdf_logits, features = self.trunk(
      x, train=train, turnoff_drop=turnoff_drop, return_features=True
    )
    out_seg = self.out_conv2(features['x9'])
    out_seg = out_seg.astype(jnp.promote_types(out_seg.dtype, jnp.float32))
    return jnp.tanh(sdf_logits), out_seg


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---


def torch_key_map(normalization: str = 'batchnorm', **unused) -> torch_keys.KeyMap:
  """DTC's VNetSDF (HiLab-git/DTC code/networks/vnet_sdf.py): the VNet key map (its out_conv is
  the tanh SDF head) plus out_conv2, the segmentation head; flax paths have the same names."""
  del unused
  out = vnet.torch_key_map(normalization)
  out.update(torch_keys.conv_entries('out_conv2', ('out_conv2',), torch_keys.conv_perm(3)))
  return out


TORCH_MAP = torch_keys.TorchMap(torch_key_map, torch_keys.volume_example_shape)
