"""Shared building blocks for the segmentation networks (channels-last).

Activations are `[B, *spatial, C]` (3D: `[B, D, H, W, C]`). Every layer keeps its parameters in
`param_dtype` (float32 by default) and computes in `dtype` (None: promote from inputs and params),
so bf16 compute is a constructor option.

Parity notes (PyTorch semantics reproduced here, see docs/parity.md "Layout conventions"):
* `BatchNorm` is torch `BatchNorm3d` (eps 1e-5, momentum 0.1, running_var updated with the
  *unbiased* batch variance).
* `GroupNorm` is torch `nn.GroupNorm(num_groups=16, ...)`, `InstanceNorm` is torch
  `nn.InstanceNorm3d` defaults (affine=False, no running stats).
* `Conv`, `DownConv2x`, `UpConv2x` with `torch_init=True` draw weight and bias from
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch's default `reset_parameters` does; fan_in is
  cin*prod(k) for convolutions and cout*prod(k) for transposed convolutions (torch computes it
  from dim 1 of the (cin, cout, *k) ConvTranspose weight).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

NORMS = ('none', 'batchnorm', 'groupnorm', 'instancenorm')


def torch_uniform(fan_in: int) -> Initializer:
  """Initializer U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for conv weights and biases.

  torch's kaiming_uniform_(a=sqrt(5)) on the weight gives bound sqrt(6/((1+5)*fan_in)) =
  1/sqrt(fan_in), the same bound it uses for the bias.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    # Drawn flat, then reshaped: with jax_threefry_partitionable (the default) XLA:CPU compiles a
    # flat draw ~5x faster than a 5-D one, which dominated VNet init time.
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
    return flat.reshape(shape)

  return init


def lecun_normal(fan_in: int) -> Initializer:
  """flax's default kernel init (truncated normal, std 1/sqrt(fan_in)), drawn flat like
  `torch_uniform` for compile speed. fan_in is explicit: cin*prod(k) for every conv here."""
  # 0.8796... is the std of a standard normal truncated to [-2, 2] (as flax's variance_scaling).
  std = 1.0 / math.sqrt(fan_in) / 0.87962566103423978

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype) * std
    return flat.reshape(shape)

  return init


def _stat_dtype(dtype: Dtype) -> Dtype:
  # Statistics in at least float32 so that bf16 compute keeps float32-accurate moments.
  return jnp.promote_types(dtype, jnp.float32)


def _spatial_letters(nd: int) -> str:
  if not 1 <= nd <= 3:
    raise ValueError(f'only 1 to 3 spatial dims are supported, got {nd}')
  return 'DHW'[-nd:]


def _dimension_numbers(nd: int) -> tuple[str, str, str]:
  s = _spatial_letters(nd)
  return f'N{s}C', f'{s}IO', f'N{s}C'


def _check_rank(x: Array, nd: int, who: str) -> None:
  if x.ndim != nd + 2:
    raise ValueError(
      f'{who}: expected input [B, *{nd} spatial dims, C] of rank {nd + 2}, got shape {x.shape}'
    )


class Conv(nn.Module):
  """Convolution with symmetric zero padding and stride; kernel (*k, cin, cout), bias (cout,).

  Input `[B, *spatial, cin]` -> `[B, *spatial', features]`; torch `Conv3d(cin, features, k,
  padding=padding, stride=strides)` with weight (O, I, *k) stored here as kernel (*k, I, O).
  """

  features: int
  kernel_size: Sequence[int]
  padding: int | Sequence[int] = 0
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  torch_init: bool = True
  dtype: Dtype | None = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = len(self.kernel_size)
    _check_rank(x, nd, f'Conv {self.name}')
    cin = x.shape[-1]
    fan_in = cin * math.prod(self.kernel_size)
    if self.torch_init:
      kernel_init, bias_init = torch_uniform(fan_in), torch_uniform(fan_in)
    else:
      kernel_init, bias_init = lecun_normal(fan_in), nn.initializers.zeros
    kernel = self.param(
      'kernel', kernel_init, (*self.kernel_size, cin, self.features), self.param_dtype
    )
    bias = None
    if self.use_bias:
      bias = self.param('bias', bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = (self.padding,) * nd if isinstance(self.padding, int) else tuple(self.padding)
    strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
    y = lax.conv_general_dilated(
      x, kernel, strides, [(p, p) for p in pad], dimension_numbers=_dimension_numbers(nd)
    )
    if bias is not None:
      y = y + bias
    return y


def _k2_params(module: nn.Module, x: Array, torch_fan_in: int):
  """Kernel (2, .., 2, cin, features) and bias of a k2 s2 (transposed) conv, promoted with `x`.

  torch init draws U(+-1/sqrt(torch_fan_in)) for both; otherwise flax's convention (lecun normal
  with fan_in = prod(kernel.shape[:-1]), zero bias).
  """
  nd = x.ndim - 2
  _spatial_letters(nd)
  cin = x.shape[-1]
  if module.torch_init:
    kernel_init, bias_init = torch_uniform(torch_fan_in), torch_uniform(torch_fan_in)
  else:
    kernel_init, bias_init = lecun_normal(cin * 2**nd), nn.initializers.zeros
  kernel = module.param(
    'kernel', kernel_init, (2,) * nd + (cin, module.features), module.param_dtype
  )
  bias = module.param('bias', bias_init, (module.features,), module.param_dtype)
  return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class DownConv2x(nn.Module):
  """Kernel-2 stride-2 convolution (no padding): `[B, *S, cin]` -> `[B, *(S // 2), features]`.

  torch `Conv3d(cin, features, 2, stride=2)`; kernel (2, .., 2, cin, features), bias (features,).
  `fast=True` computes it as space-to-depth of the non-overlapping 2^nd blocks and one matmul
  (einsum); `fast=False` uses `lax.conv_general_dilated`. Both read the same parameters and give
  the same values and gradients (tests/test_layers.py). Odd spatial sizes are floored as in torch.
  """

  features: int
  fast: bool = True
  torch_init: bool = True
  dtype: Dtype | None = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = x.ndim - 2
    x, kernel, bias = _k2_params(self, x, torch_fan_in=x.shape[-1] * 2**nd)
    if self.fast:
      y = _space_to_depth_matmul(x, kernel)
    else:
      y = lax.conv_general_dilated(
        x, kernel, (2,) * nd, 'VALID', dimension_numbers=_dimension_numbers(nd)
      )
    return y + bias


class UpConv2x(nn.Module):
  """Kernel-2 stride-2 transposed convolution: `[B, *S, cin]` -> `[B, *(2 * S), features]`.

  torch `ConvTranspose3d(cin, features, 2, stride=2)` with weight W (cin, features, a, b, c),
  stored here as kernel K = W.transpose(2, 3, 4, 0, 1) of shape (2, 2, 2, cin, features):
  out[2d+a, 2h+b, 2w+c, o] = sum_i x[d, h, w, i] * K[a, b, c, i, o] + bias[o] (blocks do not
  overlap). `fast=True`: one matmul to features * 2^nd, then depth-to-space; `fast=False`:
  `lax.conv_transpose` (with the spatially flipped kernel). The fast path exists because 3D
  transposed-conv gradients are very slow through the generic path (jax#31662).
  """

  features: int
  fast: bool = True
  torch_init: bool = True
  dtype: Dtype | None = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = x.ndim - 2
    # torch computes a ConvTranspose's fan_in from dim 1 (cout) of its (cin, cout, *k) weight.
    x, kernel, bias = _k2_params(self, x, torch_fan_in=self.features * 2**nd)
    if self.fast:
      y = _matmul_depth_to_space(x, kernel)
    else:
      flipped = kernel[(slice(None, None, -1),) * nd]
      y = lax.conv_transpose(
        x,
        flipped,
        (2,) * nd,
        'VALID',
        dimension_numbers=_dimension_numbers(nd),
        transpose_kernel=False,
      )
    return y + bias


def _space_to_depth_matmul(x: Array, kernel: Array) -> Array:
  """`[B, *S, I]` x (2,..,2, I, O) -> `[B, *(S // 2), O]` for non-overlapping 2^nd blocks."""
  nd = x.ndim - 2
  sizes = [s // 2 for s in x.shape[1:-1]]
  # torch floors odd sizes (the last row is never covered by a window); crop to match.
  x = x[(slice(None),) + tuple(slice(0, 2 * s) for s in sizes)]
  split = [x.shape[0]]
  for s in sizes:
    split += [s, 2]
  x = x.reshape(*split, x.shape[-1])
  outer, inner = string.ascii_uppercase[:nd], string.ascii_lowercase[:nd]
  interleaved = ''.join(o + i for o, i in zip(outer, inner))
  return jnp.einsum(f'n{interleaved}y,{inner}yz->n{outer}z', x, kernel)


def _matmul_depth_to_space(x: Array, kernel: Array) -> Array:
  """`[B, *S, I]` x (2,..,2, I, O) -> `[B, *(2 * S), O]`, each input voxel filling a 2^nd block."""
  nd = x.ndim - 2
  outer, inner = string.ascii_uppercase[:nd], string.ascii_lowercase[:nd]
  interleaved = ''.join(o + i for o, i in zip(outer, inner))
  y = jnp.einsum(f'n{outer}y,{inner}yz->n{interleaved}z', x, kernel)
  return y.reshape(x.shape[0], *(2 * s for s in x.shape[1:-1]), kernel.shape[-1])


class BatchNorm(nn.Module):
  """torch `BatchNorm{1,2,3}d` over all axes but the last (channels).

  `x [B, *spatial, C]`. Train: normalise with the batch mean and the *biased* batch variance over
  (B, *spatial); running_mean <- (1-m)*running_mean + m*mean and running_var <- (1-m)*running_var
  + m*var*n/(n-1) with n = B*prod(spatial) (torch stores the unbiased variance), m = `momentum`
  (torch convention, 0.1). Eval: normalise with the running stats. Running stats are not updated
  while the module is being initialised (flax convention). Under jit with the batch sharded over a
  device mesh, `jnp.mean` reduces over the global batch, so this is sync-BN.
  Variables: params `scale`, `bias`; batch_stats `mean`, `var`.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype | None = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), self.param_dtype))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), self.param_dtype))
    out_dtype = self.dtype or jnp.result_type(x, scale)
    sdt = _stat_dtype(jnp.result_type(x, scale))
    xs = x.astype(sdt)
    if train:
      n = x.size // c
      if n < 2:
        raise ValueError(
          f'BatchNorm {self.name}: train mode needs more than one value per '
          f'channel (as torch), got input shape {x.shape}'
        )
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xs, axes)
      var = jnp.mean(jnp.square(xs - mean), axes)  # Two-pass: biased variance, well conditioned.
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1 - m) * ra_var.value + m * var * (n / (n - 1))).astype(ra_var.value.dtype)
    else:
      mean, var = ra_mean.value.astype(sdt), ra_var.value.astype(sdt)
    y = (xs - mean) * lax.rsqrt(var + self.epsilon) * scale.astype(sdt) + bias.astype(sdt)
    return y.astype(out_dtype)


class GroupNorm(nn.Module):
  """torch `nn.GroupNorm(num_groups, C)` (eps 1e-5, affine): per sample, normalise each group of
  C/num_groups channels over its channels and all spatial positions with the biased variance.

  `x [B, *spatial, C]`; `train` is accepted for a uniform norm interface and ignored.
  Variables: params `scale`, `bias`.
  """

  num_groups: int = 16
  epsilon: float = 1e-5
  dtype: Dtype | None = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(
        f'GroupNorm {self.name}: {c} channels are not divisible into '
        f'{self.num_groups} groups (input shape {x.shape})'
      )
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    out_dtype = self.dtype or jnp.result_type(x, scale)
    sdt = _stat_dtype(jnp.result_type(x, scale))
    xg = x.astype(sdt).reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axes, keepdims=True)
    y = ((xg - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (y * scale.astype(sdt) + bias.astype(sdt)).astype(out_dtype)


class InstanceNorm(nn.Module):
  """torch `nn.InstanceNorm3d(C)` defaults: affine=False, no running stats, eps 1e-5.

  `x [B, *spatial, C]`: per sample and channel, (x - mean) / sqrt(biased var + eps) over the
  spatial axes, identical in train and eval. No variables.
  """

  epsilon: float = 1e-5
  dtype: Dtype | None = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    out_dtype = self.dtype or x.dtype
    xs = x.astype(_stat_dtype(x.dtype))
    axes = tuple(range(1, x.ndim - 1))
    mean = jnp.mean(xs, axes, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axes, keepdims=True)
    return ((xs - mean) * lax.rsqrt(var + self.epsilon)).astype(out_dtype)


class Identity(nn.Module):
  """normalization='none': returns its input (cast to `dtype`). No variables."""

  dtype: Dtype | None = jnp.float32

  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    return x if self.dtype is None else x.astype(self.dtype)


def norm(
  kind: str,
  *,
  dtype: Dtype | None = jnp.float32,
  param_dtype: Dtype = jnp.float32,
  name: str | None = None,
) -> nn.Module:
  """Normalisation layer by upstream name; every returned module is called as `m(x, train)`.

  kind: 'none' (identity), 'batchnorm' (`BatchNorm`), 'groupnorm' (`GroupNorm`, 16 groups as the
  upstream `nn.GroupNorm(num_groups=16, ...)`) or 'instancenorm' (`InstanceNorm`).
  """
  if kind == 'batchnorm':
    return BatchNorm(dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == 'groupnorm':
    return GroupNorm(num_groups=16, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == 'instancenorm':
    return InstanceNorm(dtype=dtype, name=name)
  if kind == 'none':
    return Identity(dtype=dtype, name=name)
  raise ValueError(f'unknown normalization {kind!r}; expected one of {NORMS}')
