"""Upstream PyTorch state_dicts -> flax variables of the matching jaxseg model.

`import_state_dict('vnet', sd, n_filters=16)` returns `{'params': ..., 'batch_stats': ...}` that
`jaxseg.models.get('vnet', n_filters=16).apply(...)` accepts. `sd` maps torch names to arrays
(numpy, or torch tensors), or is a path to a `.pth`/`.pt` file (needs torch installed).

Each network states its key map next to its layers (`TORCH_MAP` in jaxseg/models/<net>.py, built
from `jaxseg.models.torch_keys`); `TORCH_MAPS` registers them by model name. Every expected key must
be present with the expected shape; the error lists all missing, unexpected and mis-shaped keys at
once.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import models
from jaxseg.models import bcp_vnet
from jaxseg.models import cml_vnet
from jaxseg.models import resvnet
from jaxseg.models import unet2d
from jaxseg.models import unet3d
from jaxseg.models import vnet
from jaxseg.models import vnet_milletari
from jaxseg.models import vnet_sdf
from jaxseg.models.torch_keys import Entry
from jaxseg.models.torch_keys import TorchMap

Variables = dict[str, Any]

_IGNORED_SUFFIXES = ('num_batches_tracked',)

# Model name (a `jaxseg.models.MODELS` key) -> its torch import.
TORCH_MAPS: dict[str, TorchMap] = {
  'vnet': vnet.TORCH_MAP,
  'vnet_sdf': vnet_sdf.TORCH_MAP,
  'resvnet': resvnet.TORCH_MAP,
  'cml_vnet': cml_vnet.TORCH_MAP,
  'bcp_vnet': bcp_vnet.TORCH_MAP,
  'unet2d': unet2d.TORCH_MAP,
  'cml_unet2d': unet2d.CML_TORCH_MAP,
  'unet3d_dycon': unet3d.TORCH_MAP,
  'vnet_milletari': vnet_milletari.TORCH_MAP,
}


def _torch_map(model_name: str) -> TorchMap:
  if model_name not in TORCH_MAPS:
    raise KeyError(f'no torch key map for model {model_name!r}; known: {sorted(TORCH_MAPS)}')
  return TORCH_MAPS[model_name]


def key_map(model_name: str, **model_kwargs) -> dict[str, Entry]:
  """torch state_dict name -> `Entry` for model `model_name` built with `model_kwargs`."""
  return _torch_map(model_name).key_map(**model_kwargs)


def expected_torch_shapes(model_name: str, **model_kwargs) -> dict[str, tuple[int, ...]]:
  """torch state_dict name -> shape that `import_state_dict(model_name, ...)` expects."""
  keys = key_map(model_name, **model_kwargs)
  expected = _expected_variables(model_name, **model_kwargs)
  return {name: e.torch_shape(expected[(e.collection,) + e.path].shape) for name, e in keys.items()}


def _expected_variables(
  model_name: str, **model_kwargs
) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat {(collection, *path): ShapeDtypeStruct} of the model's variables, without computing."""
  model = models.get(model_name, **model_kwargs)
  x = jax.ShapeDtypeStruct(_torch_map(model_name).example_shape(**model_kwargs), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor.
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _assemble(
  model_name: str,
  entries: Mapping[str, Entry],
  state_dict: Mapping[str, Any],
  expected: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
  model_kwargs: Mapping[str, Any],
) -> Variables:
  """Checks `state_dict` against `entries` and the model's `expected` shapes; builds variables."""
  mapped = {(e.collection,) + e.path for e in entries.values()}
  if mapped != set(expected):
    # A key map out of sync with the module is a bug in jaxseg, not in the caller's checkpoint.
    raise RuntimeError(
      f'jaxseg key map for {model_name!r} is out of sync with the model: unmapped model '
      f'variables {sorted("/".join(k) for k in set(expected) - mapped)}, mapped but absent '
      f'{sorted("/".join(k) for k in mapped - set(expected))}'
    )
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
    raise ValueError(
      f'state_dict does not fit model {model_name!r} with {dict(model_kwargs)}: ' + '; '.join(parts)
    )
  variables = flax.traverse_util.unflatten_dict(flat)
  variables.setdefault('params', {})
  variables.setdefault('batch_stats', {})
  return variables


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
  """Plain state_dict from a checkpoint object: unwraps {'state_dict': sd} / {'model': sd} and
  strips a 'module.' prefix that (Distributed)DataParallel adds to every key."""
  if not isinstance(obj, Mapping):
    raise TypeError(
      f'{source}: expected a state_dict mapping of names to arrays, got {type(obj).__name__}'
    )
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  keys = list(obj)
  if keys and all(isinstance(k, str) and k.startswith('module.') for k in keys):
    obj = {k[len('module.') :]: v for k, v in obj.items()}
  return obj


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt` file with torch (CPU) into {name: numpy array}."""
  path = pathlib.Path(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'reading {path} needs PyTorch: install torch (the CPU build is enough) or '
      'pass the state_dict as a mapping of names to numpy arrays'
    ) from e
  if not path.exists():
    raise FileNotFoundError(f'torch checkpoint {path} does not exist')
  obj = torch.load(path, map_location='cpu')
  return {k: _to_numpy(v) for k, v in _unwrap(obj, str(path)).items()}


def import_state_dict(
  model_name: str, state_dict: Mapping[str, Any] | str | os.PathLike, **model_kwargs
) -> Variables:
  """Flax variables `{'params', 'batch_stats'}` of `models.get(model_name, **model_kwargs)`.

  Args:
    model_name: a `TORCH_MAPS` key ('vnet', ...).
    state_dict: upstream torch names -> arrays (numpy or torch tensors; `num_batches_tracked`
      entries are ignored), or a path to a `.pth`/`.pt` file (needs torch).
    **model_kwargs: the jaxseg model's constructor arguments (they fix the expected shapes).

  Raises:
    KeyError: unknown model name.
    ValueError: missing, unexpected or mis-shaped keys (all listed).
    ImportError: a checkpoint path was given but torch is not installed.
  """
  torch_map = _torch_map(model_name)
  if isinstance(state_dict, (str, os.PathLike)):
    if pathlib.Path(state_dict).suffix not in ('.pth', '.pt'):
      raise ValueError(
        f'state_dict path {state_dict} must end in .pth or .pt (or pass a mapping '
        'of names to numpy arrays)'
      )
    state_dict = load_torch_checkpoint(state_dict)
  else:
    state_dict = _unwrap(state_dict, 'state_dict argument')
  entries = torch_map.key_map(**model_kwargs)
  if torch_map.ignored is not None:
    state_dict = {
      k: v for k, v in state_dict.items() if k in entries or not torch_map.ignored.fullmatch(k)
    }
  return _assemble(
    model_name, entries, state_dict, _expected_variables(model_name, **model_kwargs), model_kwargs
  )
