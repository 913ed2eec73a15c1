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
from typing import Any, Callable, Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import models

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


KEY_MAPS: dict[str, Callable[..., dict[str, Entry]]] = {
    'vnet': _vnet_key_map,
}

# A small valid input shape per model (the variables' shapes do not depend on it).
EXAMPLE_SHAPES: dict[str, Callable[..., tuple[int, ...]]] = {
    'vnet': _vnet_example_shape,
}

IMPORTERS: dict[str, Callable[..., Variables]] = {
    'vnet': _import_vnet,
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
