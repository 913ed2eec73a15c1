"""CML's two-branch VNet for LA (model name 'cml_vnet').

Port of `SongwuJob/CML: code/networks/VNet.py` `VNet` (commit 1229a71), built by
`net_factory(net_type="VNet")` in `code/CML_LA_train.py`. Spec: docs/methods/cml.md section 1a.

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

Parameter tree (torch name -> flax path, `torch_key_map` below):
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

from jaxseg.models import torch_keys
from jaxseg.models import vnet
from jaxseg.models.vnet import Decoder
from jaxseg.models.vnet import Encoder
from jaxseg.models.vnet import check_input
from jaxseg.models.vnet import part_kwargs

Array = jax.Array


class CMLVNet(nn.Module):
  """Two-branch VNet: `x [B, D, H, W, n_channels]` -> `(seg1, seg2, emb1, emb2)` (module docstring).

  Attributes:
    n_channels, n_classes, n_filters, normalization, has_dropout, dropout_rate, torch_init,
    fast_updown, remat, dtype: as `jaxseg.models.vnet.VNet` (upstream's dropout p is fixed at
    0.5); the embeddings come back in at least float32, as the logits.
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
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False):
    check_input('CMLVNet', x, self.n_channels, self.normalization, self.dropout_rate)
    kw = part_kwargs(self)
    features1 = Encoder(name='encoder1', **kw)(x, train)
    features2 = Encoder(name='encoder2', **kw)(x, train)
    seg1 = Decoder(n_classes=self.n_classes, up_type=0, name='decoder1', **kw)(features1, train)
    seg2 = Decoder(n_classes=self.n_classes, up_type=1, name='decoder2', **kw)(features2, train)
    return seg1, seg2, features1[-1].astype(seg1.dtype), features2[-1].astype(seg2.dtype)


# --- torch state_dict -> flax variables (registered in jaxseg.models.torch_import) ---


def torch_key_map(normalization: str = 'batchnorm', **unused) -> torch_keys.KeyMap:
  """CML's two-branch VNet (SongwuJob/CML code/networks/VNet.py): encoder1/2 hold the VNet blocks
  one..five, decoder1/2 the blocks five_up..nine and out_conv. decoder1 upsamples with a transposed
  conv at `.conv.0`; decoder2's up blocks are [Upsample, Conv3d, norm, ReLU], so their conv is
  `.conv.1` and their norm `.conv.2` (flax: block_X_up/conv0, bn0 in both decoders)."""
  del unused
  stride = 2 if normalization == 'none' else 3
  conv = torch_keys.conv_perm(3)
  out = {}
  for k in (1, 2):
    for name, _, stages in vnet.VNET_BLOCKS[: vnet.N_ENCODER_BLOCKS]:
      for i in range(stages):
        t, path = f'encoder{k}.{name}.conv', (f'encoder{k}', name)
        out.update(torch_keys.conv_entries(f'{t}.{stride * i}', path + (f'conv{i}',), conv))
        out.update(
          torch_keys.norm_entries(normalization, f'{t}.{stride * i + 1}', path + (f'bn{i}',))
        )
    for name, kind, stages in vnet.VNET_BLOCKS[vnet.N_ENCODER_BLOCKS :]:
      t, path = f'decoder{k}.{name}.conv', (f'decoder{k}', name)
      if kind == 'up':
        first = 0 if k == 1 else 1  # decoder2: index 0 is the parameter-free Upsample
        perm = torch_keys.conv_transpose_perm(3) if k == 1 else conv
        out.update(torch_keys.conv_entries(f'{t}.{first}', path + ('conv0',), perm))
        out.update(torch_keys.norm_entries(normalization, f'{t}.{first + 1}', path + ('bn0',)))
        continue
      for i in range(stages):
        out.update(torch_keys.conv_entries(f'{t}.{stride * i}', path + (f'conv{i}',), conv))
        out.update(
          torch_keys.norm_entries(normalization, f'{t}.{stride * i + 1}', path + (f'bn{i}',))
        )
    out.update(torch_keys.conv_entries(f'decoder{k}.out_conv', (f'decoder{k}', 'out_conv'), conv))
  return out


TORCH_MAP = torch_keys.TorchMap(torch_key_map, torch_keys.volume_example_shape)
