"""CML's two-branch VNet for LA (model name 'cml_vnet').

Port of `SongwuJob/CML: code/networks/VNet.py` `VNet` (commit 1229a71), built by
`net_factory(net_type="VNet")` in `code/CML_LA_train.py`. Spec: shared/spec/methods/cml.md section 1a.

Two independent UA-MT VNet encoders and two decoders (`jaxseg.models.vnet.Encoder` / `Decoder`) that
differ only in their upsampling:
  * decoder1 (upstream up_type 0): ConvTranspose k2 s2 -> norm -> ReLU (the UA-MT decoder);
  * decoder2 (upstream up_type 1): Upsample x2 trilinear (align_corners=True) -> Conv 3x3x3 pad 1 ->
    norm -> ReLU.
Each encoder has its own Dropout3d(0.5) on the bottleneck x5, each decoder its own on x9 (train mode,
`has_dropout`). Skips are additive.

`apply(variables, x [B, D, H, W, C], train=False)` returns `(seg1, seg2, emb1, emb2)`: the logits
`[B, D, H, W, n_classes]` of encoder1->decoder1 and encoder2->decoder2, and each encoder's bottleneck
x5 after its dropout, `[B, D/16, H/16, W/16, 16f]` (upstream `embedding1/2`; not a projection).

Parameter tree (torch name -> flax path, see `jaxseg.models.torch_import`):
  encoderK.block_X.conv.{3k} / .{3k+1}   -> encoderK/block_X/conv{k} / bn{k}
  decoder1.block_X_up.conv.0 / .1        -> decoder1/block_X_up/conv0 / bn0   (transposed conv)
  decoder2.block_X_up.conv.1 / .2        -> decoder2/block_X_up/conv0 / bn0   (3x3x3 conv)
  decoderK.block_X.conv.{3k} / .{3k+1}   -> decoderK/block_X/conv{k} / bn{k}
  decoderK.out_conv                      -> decoderK/out_conv
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.vnet import Decoder, Encoder, check_input, part_kwargs

Array = jax.Array


class CMLVNet(nn.Module):
  """Two-branch VNet: `x [B, D, H, W, n_channels]` -> `(seg1, seg2, emb1, emb2)` (module docstring).

  Attributes:
    n_channels, n_classes, n_filters, normalization, has_dropout, dropout_rate, torch_init,
    fast_updown, dtype: as `jaxseg.models.vnet.VNet` (upstream's dropout p is fixed at 0.5).
  D, H, W must be divisible by 16. Dropout draws from the 'dropout' rng stream (four independent
  modules, so four independent masks per call).
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
  def __call__(self, x: Array, train: bool = False):
    check_input('CMLVNet', x, self.n_channels, self.normalization, self.dropout_rate)
    kw = part_kwargs(self)
    features1 = Encoder(name='encoder1', **kw)(x, train)
    features2 = Encoder(name='encoder2', **kw)(x, train)
    seg1 = Decoder(n_classes=self.n_classes, up_type=0, name='decoder1', **kw)(features1, train)
    seg2 = Decoder(n_classes=self.n_classes, up_type=1, name='decoder2', **kw)(features2, train)
    return seg1, seg2, features1[-1], features2[-1]
