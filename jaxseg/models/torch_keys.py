"""The vocabulary of torch key maps: where each upstream state_dict tensor goes in flax variables.

Each network module states its own map next to its layers (`torch_key_map(**model_kwargs)` and a
`TORCH_MAP`); `jaxseg.models.torch_import` registers the maps and does the checking and loading.

Layout conventions (docs/parity.md "Layout conventions"): Conv weight (O, I, *k) -> kernel
(*k, I, O); ConvTranspose weight (I, O, *k) -> kernel (*k, I, O) (jaxseg's `UpConv2x` semantics,
no flip); Linear weight (O, I) -> kernel (I, O); BatchNorm weight/bias/running_mean/running_var ->
params scale/bias and batch_stats mean/var; `num_batches_tracked` is ignored (momentum is fixed, so
it is only a counter).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


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


KeyMap = dict[str, Entry]


class TorchMap(NamedTuple):
  """A network's torch import: its key map, a small valid input and the keys it drops.

  key_map(**model_kwargs) -> {torch name: Entry}, exactly the model's variables.
  example_shape(**model_kwargs) -> a channels-last input shape the model accepts (the variables'
    shapes do not depend on it).
  ignored: upstream keys of modules the port does not build (no forward uses them); a key matching
    it and absent from the key map is dropped, anything else unexpected is an error.
  """

  key_map: Callable[..., KeyMap]
  example_shape: Callable[..., tuple[int, ...]]
  ignored: re.Pattern | None = None


def conv_perm(nd: int) -> tuple[int, ...]:
  """torch Conv weight (O, I, *k) -> flax kernel (*k, I, O)."""
  return tuple(range(2, nd + 2)) + (1, 0)


def conv_transpose_perm(nd: int) -> tuple[int, ...]:
  """torch ConvTranspose weight (I, O, *k) -> jaxseg `UpConv2x` kernel (*k, I, O)."""
  return tuple(range(2, nd + 2)) + (0, 1)


LINEAR_PERM = (1, 0)  # torch Linear weight (O, I) -> flax Dense kernel (I, O)


def conv_entries(torch_prefix: str, path: tuple[str, ...], perm: tuple[int, ...]) -> KeyMap:
  """`<prefix>.weight` -> kernel (permuted by `perm`), `<prefix>.bias` -> bias."""
  return {
    f'{torch_prefix}.weight': Entry('params', path + ('kernel',), perm),
    f'{torch_prefix}.bias': Entry('params', path + ('bias',)),
  }


def norm_entries(kind: str, torch_prefix: str, path: tuple[str, ...]) -> KeyMap:
  """A normalization layer's tensors: none for 'none' and 'instancenorm' (upstream's have no
  affine), scale/bias for 'groupnorm', and the running statistics too for 'batchnorm'."""
  if kind in ('none', 'instancenorm'):
    return {}
  if kind not in ('batchnorm', 'groupnorm'):
    raise ValueError(
      f'unknown normalization {kind!r}; expected none, batchnorm, groupnorm or instancenorm'
    )
  out = {
    f'{torch_prefix}.weight': Entry('params', path + ('scale',)),
    f'{torch_prefix}.bias': Entry('params', path + ('bias',)),
  }
  if kind == 'batchnorm':
    out[f'{torch_prefix}.running_mean'] = Entry('batch_stats', path + ('mean',))
    out[f'{torch_prefix}.running_var'] = Entry('batch_stats', path + ('var',))
  return out


def volume_example_shape(n_channels: int = 1, **unused) -> tuple[int, ...]:
  """(1, 16, 16, 16, n_channels): valid for every 3D network whose sizes divide by 16."""
  del unused
  return (1, 16, 16, 16, n_channels)


def image_example_shape(n_channels: int = 1, **unused) -> tuple[int, ...]:
  """(1, 16, 16, n_channels): valid for the 2D UNets."""
  del unused
  return (1, 16, 16, n_channels)
