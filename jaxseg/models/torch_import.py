"""Upstream PyTorch state_dicts -> flax variables of the matching jaxseg model.

`import_state_dict('vnet', sd, n_filters=16)` returns `{'params': ..., 'batch_stats': ...}` that
`jaxseg.models.get('vnet', n_filters=16).apply(...)` accepts. `sd` maps torch names to arrays
(numpy, or torch tensors), or is a path to a `.pth`/`.pt` file (needs torch installed).

Layout conventions (shared/parity/NETWORKS.md section 2): Conv weight (O, I, *k) -> kernel
(*k, I, O); ConvTranspose weight (I, O, *k) -> kernel (*k, I, O) (jaxseg's `UpConv2x` semantics,
no flip); BatchNorm weight/bias/running_mean/running_var -> params scale/bias and batch_stats
mean/var; `num_batches_tracked` is ignored (momentum is fixed, so it is only a counter).

Each network registers a key map (`KEY_MAPS`: torch name -> `Entry`) and an importer
(`IMPORTERS`). Every expected key must be present with the expected shape; the error lists all
missing, unexpected and mis-shaped keys at once.
"""
from __future__ import annotations

import functools
import os
import pathlib
import re
from typing import Any, Callable, Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import models
from jaxseg.models import resvnet

Variables = dict[str, Any]

_IGNORED_SUFFIXES = ('num_batches_tracked',)


class Entry(NamedTuple):
  """Where one torch tensor goes: `variables[collection][path...]`, axes permuted by `perm`."""
  collection: str
  path: tuple[str, ...]
  perm: tuple[int, ...] | None = None

  def to_flax(self, a: np.ndarray) -> np.ndarray:
    return a if self.perm is None else np.transpose(a, self.perm)

  def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape that maps to `flax_shape`."""
    if self.perm is None:
      return tuple(flax_shape)
    out = [0] * len(flax_shape)
    for flax_axis, torch_axis in enumerate(self.perm):
      out[torch_axis] = flax_shape[flax_axis]
    return tuple(out)


def conv_perm(nd: int) -> tuple[int, ...]:
  """torch Conv weight (O, I, *k) -> flax kernel (*k, I, O)."""
  return tuple(range(2, nd + 2)) + (1, 0)


def conv_transpose_perm(nd: int) -> tuple[int, ...]:
  """torch ConvTranspose weight (I, O, *k) -> jaxseg `UpConv2x` kernel (*k, I, O)."""
  return tuple(range(2, nd + 2)) + (0, 1)


def _conv_entries(torch_prefix: str, path: tuple[str, ...], perm: tuple[int, ...]
                  ) -> dict[str, Entry]:
  return {f'{torch_prefix}.weight': Entry('params', path + ('kernel',), perm),
          f'{torch_prefix}.bias': Entry('params', path + ('bias',))}


def _norm_entries(kind: str, torch_prefix: str, path: tuple[str, ...]) -> dict[str, Entry]:
  if kind in ('none', 'instancenorm'):
    return {}
  if kind not in ('batchnorm', 'groupnorm'):
    raise ValueError(f'unknown normalization {kind!r}; expected none, batchnorm, groupnorm or '
                     'instancenorm')
  out = {f'{torch_prefix}.weight': Entry('params', path + ('scale',)),
         f'{torch_prefix}.bias': Entry('params', path + ('bias',))}
  if kind == 'batchnorm':
    out[f'{torch_prefix}.running_mean'] = Entry('batch_stats', path + ('mean',))
    out[f'{torch_prefix}.running_var'] = Entry('batch_stats', path + ('var',))
  return out


# (name, kind, stages) of the UA-MT VNet, in forward order (yulequan/UA-MT code/networks/vnet.py).
VNET_BLOCKS = (
    ('block_one', 'conv', 1), ('block_one_dw', 'down', 1),
    ('block_two', 'conv', 2), ('block_two_dw', 'down', 1),
    ('block_three', 'conv', 3), ('block_three_dw', 'down', 1),
    ('block_four', 'conv', 3), ('block_four_dw', 'down', 1),
    ('block_five', 'conv', 3), ('block_five_up', 'up', 1),
    ('block_six', 'conv', 3), ('block_six_up', 'up', 1),
    ('block_seven', 'conv', 3), ('block_seven_up', 'up', 1),
    ('block_eight', 'conv', 2), ('block_eight_up', 'up', 1),
    ('block_nine', 'conv', 1),
)


def vnet_block_entries(normalization: str = 'batchnorm', prefix: str = '',
                       path: tuple[str, ...] = ()) -> dict[str, Entry]:
  """Key map of the 17 VNet blocks (not out_conv), for networks that reuse them.

  Upstream blocks are `nn.Sequential`s of [conv, norm, ReLU] per stage (or [conv, ReLU] with
  normalization='none'), so stage k's conv is `.conv.{s*k}` and its norm `.conv.{s*k+1}`.
  """
  stride = 2 if normalization == 'none' else 3
  out = {}
  for name, kind, stages in VNET_BLOCKS:
    perm = conv_transpose_perm(3) if kind == 'up' else conv_perm(3)
    for k in range(stages):
      t = f'{prefix}{name}.conv'
      out.update(_conv_entries(f'{t}.{stride * k}', path + (name, f'conv{k}'), perm))
      out.update(_norm_entries(normalization, f'{t}.{stride * k + 1}', path + (name, f'bn{k}')))
  return out


def _vnet_key_map(normalization: str = 'batchnorm', **unused) -> dict[str, Entry]:
  del unused
  out = vnet_block_entries(normalization)
  out.update(_conv_entries('out_conv', ('out_conv',), conv_perm(3)))
  return out


def _expected_variables(model_name: str, example_shape: tuple[int, ...], **model_kwargs
                        ) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat {(collection, *path): ShapeDtypeStruct} of the model's variables, without computing."""
  model = models.get(model_name, **model_kwargs)
  x = jax.ShapeDtypeStruct(example_shape, jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor.
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _assemble(model_name: str, entries: Mapping[str, Entry], state_dict: Mapping[str, Any],
              expected: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
              model_kwargs: Mapping[str, Any]) -> Variables:
  """Checks `state_dict` against `entries` and the model's `expected` shapes; builds variables."""
  mapped = {(e.collection,) + e.path for e in entries.values()}
  if mapped != set(expected):
    # A key map out of sync with the module is a bug in jaxseg, not in the caller's checkpoint.
    raise RuntimeError(
        f'jaxseg key map for {model_name!r} is out of sync with the model: unmapped model '
        f'variables {sorted("/".join(k) for k in set(expected) - mapped)}, mapped but absent '
        f'{sorted("/".join(k) for k in mapped - set(expected))}')
  given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  missing = sorted(set(entries) - set(given))
  unexpected = sorted(set(given) - set(entries))
  misshaped, flat = [], {}
  for name, entry in entries.items():
    if name not in given:
      continue
    arr = _to_numpy(given[name])
    want = expected[(entry.collection,) + entry.path].shape
    torch_want = entry.torch_shape(want)
    if arr.shape != torch_want:
      misshaped.append(f'{name}: got {arr.shape}, expected {torch_want}')
      continue
    flat[(entry.collection,) + entry.path] = jnp.asarray(entry.to_flax(arr), jnp.float32)
  if missing or unexpected or misshaped:
    parts = []
    if missing:
      parts.append(f'missing keys ({len(missing)}): {missing}')
    if unexpected:
      parts.append(f'unexpected keys ({len(unexpected)}): {unexpected}')
    if misshaped:
      parts.append(f'mis-shaped keys ({len(misshaped)}): {misshaped}')
    raise ValueError(f'state_dict does not fit model {model_name!r} with {dict(model_kwargs)}: '
                     + '; '.join(parts))
  variables = flax.traverse_util.unflatten_dict(flat)
  variables.setdefault('params', {})
  variables.setdefault('batch_stats', {})
  return variables


def _vnet_example_shape(n_channels: int = 1, **unused) -> tuple[int, ...]:
  del unused
  return (1, 16, 16, 16, n_channels)


def _import_vnet(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('vnet', _vnet_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('vnet', _vnet_key_map(**model_kwargs), state_dict, expected, model_kwargs)


# --- cml_vnet ---
def _cml_vnet_key_map(normalization: str = 'batchnorm', **unused) -> dict[str, Entry]:
  """CML's two-branch VNet (SongwuJob/CML code/networks/VNet.py): encoder1/2 hold the VNet blocks
  one..five, decoder1/2 the blocks five_up..nine and out_conv. decoder1 upsamples with a transposed
  conv at `.conv.0`; decoder2's up blocks are [Upsample, Conv3d, norm, ReLU], so their conv is
  `.conv.1` and their norm `.conv.2` (flax: block_X_up/conv0, bn0 in both decoders)."""
  del unused
  n_encoder = 9  # block_one .. block_five in VNET_BLOCKS
  stride = 2 if normalization == 'none' else 3
  out = {}
  for k in (1, 2):
    for name, kind, stages in VNET_BLOCKS[:n_encoder]:
      for i in range(stages):
        t, path = f'encoder{k}.{name}.conv', (f'encoder{k}', name)
        out.update(_conv_entries(f'{t}.{stride * i}', path + (f'conv{i}',), conv_perm(3)))
        out.update(_norm_entries(normalization, f'{t}.{stride * i + 1}', path + (f'bn{i}',)))
    for name, kind, stages in VNET_BLOCKS[n_encoder:]:
      t, path = f'decoder{k}.{name}.conv', (f'decoder{k}', name)
      if kind == 'up':
        first = 0 if k == 1 else 1  # decoder2: index 0 is the parameter-free Upsample
        perm = conv_transpose_perm(3) if k == 1 else conv_perm(3)
        out.update(_conv_entries(f'{t}.{first}', path + ('conv0',), perm))
        out.update(_norm_entries(normalization, f'{t}.{first + 1}', path + ('bn0',)))
        continue
      for i in range(stages):
        out.update(_conv_entries(f'{t}.{stride * i}', path + (f'conv{i}',), conv_perm(3)))
        out.update(_norm_entries(normalization, f'{t}.{stride * i + 1}', path + (f'bn{i}',)))
    out.update(_conv_entries(f'decoder{k}.out_conv', (f'decoder{k}', 'out_conv'), conv_perm(3)))
  return out


def _import_cml_vnet(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('cml_vnet', _vnet_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('cml_vnet', _cml_vnet_key_map(**model_kwargs), state_dict, expected,
                   model_kwargs)


# --- vnet_sdf ---
def _vnet_sdf_key_map(normalization: str = 'batchnorm', **unused) -> dict[str, Entry]:
  """DTC's VNetSDF (HiLab-git/DTC code/networks/vnet_sdf.py): the VNet key map (its out_conv is
  the tanh SDF head) plus out_conv2, the segmentation head; flax paths have the same names."""
  del unused
  out = _vnet_key_map(normalization)
  out.update(_conv_entries('out_conv2', ('out_conv2',), conv_perm(3)))
  return out


def _import_vnet_sdf(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('vnet_sdf', _vnet_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('vnet_sdf', _vnet_sdf_key_map(**model_kwargs), state_dict, expected,
                   model_kwargs)


# --- resvnet ---
def _resvnet_key_map(normalization: str = 'batchnorm', depths=None, **unused) -> dict[str, Entry]:
  """MCF's Resnet34 (WYC-321/MCF code/networks/ResNet34.py, encoder code/networks/resnet.py):
  `resnet_encoder.*` (bias-free convs, BatchNorm whatever `normalization`) -> flax
  resnet_encoder/{conv1, bn1, layer{i}_{j}/{conv1, bn1, conv2, bn2, downsample_conv,
  downsample_bn}}; torch `layer{i}.{j}.downsample.0/.1` is the first block's shortcut. The decoder
  keeps the VNet names (block_five_up .. block_nine, out_conv)."""
  del unused
  enc = 'resnet_encoder'

  def conv(torch_prefix, path):
    return {f'{torch_prefix}.weight': Entry('params', path + ('kernel',), conv_perm(3))}

  out = conv(f'{enc}.conv1', (enc, 'conv1'))
  out.update(_norm_entries('batchnorm', f'{enc}.bn1', (enc, 'bn1')))
  for i, depth in enumerate(depths or resvnet.RESNET34_DEPTHS, start=1):
    for j in range(depth):
      t, path = f'{enc}.layer{i}.{j}', (enc, f'layer{i}_{j}')
      for k in (1, 2):
        out.update(conv(f'{t}.conv{k}', path + (f'conv{k}',)))
        out.update(_norm_entries('batchnorm', f'{t}.bn{k}', path + (f'bn{k}',)))
      if j == 0:
        out.update(conv(f'{t}.downsample.0', path + ('downsample_conv',)))
        out.update(_norm_entries('batchnorm', f'{t}.downsample.1', path + ('downsample_bn',)))
  decoder = set(resvnet.DECODER_BLOCKS)
  out.update({k: e for k, e in vnet_block_entries(normalization).items()
              if k.split('.')[0] in decoder})
  out.update(_conv_entries('out_conv', ('out_conv',), conv_perm(3)))
  return out


def _import_resvnet(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('resvnet', _vnet_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('resvnet', _resvnet_key_map(**model_kwargs), state_dict, expected, model_kwargs)


# --- unet3d_dycon ---
def _unet3d_dycon_key_map(**unused) -> dict[str, Entry]:
  """DyCON's UNet3D (KU-CVML/DyCON code/networks/UNet3D_contrastive.py + utils.py): each
  UnetConv3 holds `convS.0` (Conv3d) of its two Sequential stages (InstanceNorm has no params);
  `projection` is Sequential [Conv3d, BatchNorm3d, ReLU, Conv3d, BatchNorm3d] (flax conv0, bn1,
  conv3, bn4)."""
  del unused
  out = {}
  blocks = [(b, (b,)) for b in ('conv1', 'conv2', 'conv3', 'conv4', 'center')]
  blocks += [(f'up_concat{k}.conv', (f'up_concat{k}', 'conv')) for k in (4, 3, 2, 1)]
  for torch_prefix, path in blocks:
    for s in ('conv1', 'conv2'):
      out.update(_conv_entries(f'{torch_prefix}.{s}.0', path + (s,), conv_perm(3)))
  for head in ('final', 'out_conv2'):
    out.update(_conv_entries(head, (head,), conv_perm(3)))
  for i, kind in ((0, 'conv'), (1, 'bn'), (3, 'conv'), (4, 'bn')):
    path = ('projection', f'{kind}{i}')
    if kind == 'conv':
      out.update(_conv_entries(f'projection.{i}', path, conv_perm(3)))
    else:
      out.update(_norm_entries('batchnorm', f'projection.{i}', path))
  return out


def _unet3d_dycon_example_shape(in_channels: int = 1, **unused) -> tuple[int, ...]:
  del unused
  return (1, 16, 16, 16, in_channels)


def _import_unet3d_dycon(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('unet3d_dycon', _unet3d_dycon_example_shape(**model_kwargs),
                                 **model_kwargs)
  return _assemble('unet3d_dycon', _unet3d_dycon_key_map(**model_kwargs), state_dict, expected,
                   model_kwargs)


# --- unet2d / cml_unet2d ---
# Keys of BCP's UNet_2d heads that no loss uses (DeepMed-Lab-ECNU/BCP code/networks/unet.py:
# projection_head, prediction_head, contrastive_class_selector_{c}, ..._memory{c}, each a
# Sequential of Linear / BatchNorm1d). jaxseg's UNet2d does not build them: the importer accepts and
# ignores exactly these keys (anything else unexpected is still an error).
UNET2D_IGNORED_KEYS = re.compile(
    r'(projection_head|prediction_head|contrastive_class_selector_(memory)?\d+)\.\d+\.'
    r'(weight|bias|running_mean|running_var|num_batches_tracked)')


def _unet2d_conv_block_entries(torch_prefix: str, path: tuple[str, ...]) -> dict[str, Entry]:
  """SSL4MIS ConvBlock: Sequential [Conv, BN, LeakyReLU, Dropout, Conv, BN, LeakyReLU]."""
  out = {}
  for k, (conv_i, bn_i) in enumerate(((0, 1), (4, 5))):
    out.update(_conv_entries(f'{torch_prefix}.conv_conv.{conv_i}', path + (f'conv{k}',),
                             conv_perm(2)))
    out.update(_norm_entries('batchnorm', f'{torch_prefix}.conv_conv.{bn_i}', path + (f'bn{k}',)))
  return out


def _unet2d_encoder_entries(prefix: str) -> dict[str, Entry]:
  out = _unet2d_conv_block_entries(f'{prefix}.in_conv', (prefix, 'in_conv'))
  for k in range(1, 5):
    out.update(_unet2d_conv_block_entries(f'{prefix}.down{k}.maxpool_conv.1', (prefix, f'down{k}')))
  return out


def _unet2d_decoder_entries(prefix: str, up_type: int) -> dict[str, Entry]:
  out = {}
  for k in range(1, 5):
    t, path = f'{prefix}.up{k}', (prefix, f'up{k}')
    if up_type == 1:
      out.update(_conv_entries(f'{t}.conv1x1', path + ('conv1x1',), conv_perm(2)))
    else:
      out.update(_conv_entries(f'{t}.up', path + ('up',), conv_transpose_perm(2)))
    out.update(_unet2d_conv_block_entries(f'{t}.conv', path + ('conv',)))
  out.update(_conv_entries(f'{prefix}.out_conv', (prefix, 'out_conv'), conv_perm(2)))
  return out


def _unet2d_key_map(up_type: int = 1, **unused) -> dict[str, Entry]:
  """BCP UNet_2d / SSL4MIS UNet (jaxseg/models/unet2d.py): `encoder.*`, `decoder.*`."""
  del unused
  return {**_unet2d_encoder_entries('encoder'), **_unet2d_decoder_entries('decoder', up_type)}


def _cml_unet2d_key_map(shared_branches: bool = True, **unused) -> dict[str, Entry]:
  """CML's ACDC UNet (SongwuJob/CML code/networks/unet.py): one `encoder`, `decoder1` (bilinear),
  `decoder2` (transposed conv, never run upstream but in its state_dict); `encoder2` only for the
  heterogeneous shared_branches=False variant (no upstream checkpoint has it)."""
  del unused
  out = {**_unet2d_encoder_entries('encoder'), **_unet2d_decoder_entries('decoder1', 1),
         **_unet2d_decoder_entries('decoder2', 0)}
  if not shared_branches:
    out.update(_unet2d_encoder_entries('encoder2'))
  return out


def _unet2d_example_shape(n_channels: int = 1, **unused) -> tuple[int, ...]:
  del unused
  return (1, 16, 16, n_channels)


def _import_unet2d(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  kept = {k: v for k, v in state_dict.items() if not UNET2D_IGNORED_KEYS.fullmatch(k)}
  expected = _expected_variables('unet2d', _unet2d_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('unet2d', _unet2d_key_map(**model_kwargs), kept, expected, model_kwargs)


def _import_cml_unet2d(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  expected = _expected_variables('cml_unet2d', _unet2d_example_shape(**model_kwargs),
                                 **model_kwargs)
  return _assemble('cml_unet2d', _cml_unet2d_key_map(**model_kwargs), state_dict, expected,
                   model_kwargs)


# --- bcp_vnet ---
def _bcp_vnet_key_map(normalization: str = 'batchnorm', with_heads: bool = False, **unused
                      ) -> dict[str, Entry]:
  """BCP's VNet (DeepMed-Lab-ECNU/BCP code/networks/VNet.py): `encoder.block_one..block_five`,
  `decoder.block_five_up..block_nine`, `decoder.out_conv` (VNet block layout); with_heads adds the
  unused Linear/BatchNorm1d heads (`<head>.0` Linear -> fc0, `.1` BN -> bn, `.3` Linear -> fc1)."""
  del unused
  from jaxseg.models import bcp_vnet  # pylint: disable=g-import-not-at-top
  encoder_blocks = {name for name, _, _ in VNET_BLOCKS[:9]}
  out = {}
  for part in ('encoder', 'decoder'):
    entries = vnet_block_entries(normalization, prefix=f'{part}.', path=(part,))
    out.update({k: e for k, e in entries.items()
                if (e.path[1] in encoder_blocks) == (part == 'encoder')})
  out.update(_conv_entries('decoder.out_conv', ('decoder', 'out_conv'), conv_perm(3)))
  if with_heads:
    for head in bcp_vnet.head_names():
      out.update(_conv_entries(f'{head}.0', (head, 'fc0'), (1, 0)))
      out.update(_norm_entries('batchnorm', f'{head}.1', (head, 'bn')))
      out.update(_conv_entries(f'{head}.3', (head, 'fc1'), (1, 0)))
  return out


def _import_bcp_vnet(state_dict: Mapping[str, Any], **model_kwargs) -> Variables:
  if not model_kwargs.get('with_heads', False):
    # The heads no forward runs (same names as BCP's UNet_2d heads): dropped without them.
    state_dict = {k: v for k, v in state_dict.items() if not UNET2D_IGNORED_KEYS.fullmatch(k)}
  expected = _expected_variables('bcp_vnet', _vnet_example_shape(**model_kwargs), **model_kwargs)
  return _assemble('bcp_vnet', _bcp_vnet_key_map(**model_kwargs), state_dict, expected,
                   model_kwargs)


KEY_MAPS: dict[str, Callable[..., dict[str, Entry]]] = {
    'unet2d': _unet2d_key_map,
    'cml_unet2d': _cml_unet2d_key_map,
    'cml_vnet': _cml_vnet_key_map,
    'vnet': _vnet_key_map,
    'vnet_sdf': _vnet_sdf_key_map,
    'resvnet': _resvnet_key_map,
    'unet3d_dycon': _unet3d_dycon_key_map,
    'bcp_vnet': _bcp_vnet_key_map,
}

# A small valid input shape per model (the variables' shapes do not depend on it).
EXAMPLE_SHAPES: dict[str, Callable[..., tuple[int, ...]]] = {
    'unet2d': _unet2d_example_shape,
    'cml_unet2d': _unet2d_example_shape,
    'cml_vnet': _vnet_example_shape,
    'vnet': _vnet_example_shape,
    'vnet_sdf': _vnet_example_shape,
    'resvnet': _vnet_example_shape,
    'unet3d_dycon': _unet3d_dycon_example_shape,
    'bcp_vnet': _vnet_example_shape,
}

IMPORTERS: dict[str, Callable[..., Variables]] = {
    'unet2d': _import_unet2d,
    'cml_unet2d': _import_cml_unet2d,
    'cml_vnet': _import_cml_vnet,
    'vnet': _import_vnet,
    'vnet_sdf': _import_vnet_sdf,
    'resvnet': _import_resvnet,
    'unet3d_dycon': _import_unet3d_dycon,
    'bcp_vnet': _import_bcp_vnet,
}


def key_map(model_name: str, **model_kwargs) -> dict[str, Entry]:
  """torch state_dict name -> `Entry` for model `model_name` built with `model_kwargs`."""
  if model_name not in KEY_MAPS:
    raise KeyError(f'no torch key map for model {model_name!r}; known: {sorted(KEY_MAPS)}')
  return KEY_MAPS[model_name](**model_kwargs)


def expected_torch_shapes(model_name: str, **model_kwargs) -> dict[str, tuple[int, ...]]:
  """torch state_dict name -> shape that `import_state_dict(model_name, ...)` expects."""
  keys = key_map(model_name, **model_kwargs)
  expected = _expected_variables(model_name, EXAMPLE_SHAPES[model_name](**model_kwargs),
                                 **model_kwargs)
  return {name: e.torch_shape(expected[(e.collection,) + e.path].shape) for name, e in keys.items()}


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
  """Plain state_dict from a checkpoint object: unwraps {'state_dict': sd} / {'model': sd} and
  strips a 'module.' prefix that (Distributed)DataParallel adds to every key."""
  if not isinstance(obj, Mapping):
    raise TypeError(f'{source}: expected a state_dict mapping of names to arrays, got '
                    f'{type(obj).__name__}')
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  keys = list(obj)
  if keys and all(isinstance(k, str) and k.startswith('module.') for k in keys):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return obj


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt` file with torch (CPU) into {name: numpy array}."""
  path = pathlib.Path(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch: install torch (the CPU build is enough) or '
                      'pass the state_dict as a mapping of names to numpy arrays') from e
  if not path.exists():
    raise FileNotFoundError(f'torch checkpoint {path} does not exist')
  obj = torch.load(path, map_location='cpu')
  return {k: _to_numpy(v) for k, v in _unwrap(obj, str(path)).items()}


def import_state_dict(model_name: str, state_dict: Mapping[str, Any] | str | os.PathLike,
                      **model_kwargs) -> Variables:
  """Flax variables `{'params', 'batch_stats'}` of `models.get(model_name, **model_kwargs)`.

  Args:
    model_name: an `IMPORTERS` key ('vnet', ...).
    state_dict: upstream torch names -> arrays (numpy or torch tensors; `num_batches_tracked`
      entries are ignored), or a path to a `.pth`/`.pt` file (needs torch).
    **model_kwargs: the jaxseg model's constructor arguments (they fix the expected shapes).

  Raises:
    KeyError: unknown model name.
    ValueError: missing, unexpected or mis-shaped keys (all listed).
    ImportError: a checkpoint path was given but torch is not installed.
  """
  if model_name not in IMPORTERS:
    raise KeyError(f'no torch importer for model {model_name!r}; known: {sorted(IMPORTERS)}')
  if isinstance(state_dict, (str, os.PathLike)):
    if pathlib.Path(state_dict).suffix not in ('.pth', '.pt'):
      raise ValueError(f'state_dict path {state_dict} must end in .pth or .pt (or pass a mapping '
                       'of names to numpy arrays)')
    state_dict = load_torch_checkpoint(state_dict)
  else:
    state_dict = _unwrap(state_dict, 'state_dict argument')
  return IMPORTERS[model_name](state_dict, **model_kwargs)
