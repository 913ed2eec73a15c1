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

import contextlib
import functools
import itertools
import math
import os
import string
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.errors import ConfigError

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
    y = conv(x, kernel, pad, strides)
    if bias is not None:
      y = y + bias
    return y


def conv(
  x: Array,
  kernel: Array,
  pad: Sequence[int],
  strides: Sequence[int] | None = None,
  large_kernel: bool = False,
) -> Array:
  """Convolution `[B, *S, I]` x (*k, I, O) with symmetric zero padding `pad` and `strides`
  (default 1) -> `[B, *S', O]`, no bias: `_conv_matmul` where `CONV_LOWERING` picks it for this
  kernel, else `lax.conv_general_dilated`: the convolution of `Conv`, of DyCON's UNet3D and of the
  Milletari V-Net. `large_kernel` (the Milletari V-Net's 5^3 kernels) keeps lax outside
  `spatially_partitioned`: as matmuls their output before the slice sum would hold 25 x cout
  channels at every padded position, gigabytes at its 128x128x64 patch.

  Inside `spatially_partitioned` no XLA convolution is left: stride-1 kernels are `_conv_matmul`,
  kernels that tile the input (stride = kernel, no padding) a space-to-depth matmul, 1x1 kernels one
  matmul.
  """
  nd = kernel.ndim - 2
  ks, pad, strides = kernel.shape[:nd], tuple(pad), tuple(strides or (1,) * nd)
  if _PARTITIONED:
    if all(s == 1 for s in strides) and all(0 <= p < k for p, k in zip(pad, ks)):
      if math.prod(ks) > 1:
        return _conv_matmul(x, kernel, pad)
      return jnp.einsum('...i,io->...o', x, kernel.reshape(kernel.shape[-2:]))
    if strides == ks and not any(pad) and ks == (2,) * nd:
      return _space_to_depth_matmul(x, kernel)
    raise ConfigError(
      f'a convolution with kernel {ks}, strides {strides} and padding {pad} has no lowering '
      'for a spatially partitioned step (layers.spatially_partitioned); use mesh.shape without '
      '"space"'
    )
  if not large_kernel and _use_matmul_conv(ks, pad, strides):
    return _conv_matmul(x, kernel, pad)
  return lax.conv_general_dilated(
    x, kernel, strides, [(p, p) for p in pad], dimension_numbers=_dimension_numbers(nd)
  )


# Set while a step whose activations are split over the mesh's "space" axis is traced
# (`spatially_partitioned`): XLA's partitioned convolution then returns wrong weight gradients
# where the activations are also replicated along another axis (jax 0.10,
# tests/test_parallel.py::test_xla_depth_sharded_conv_gradient), while the matmuls, pads and slices
# of the matmul forms partition correctly (tests/test_parallel.py).
_PARTITIONED = False


@contextlib.contextmanager
def spatially_partitioned():
  """Within it, `conv`, `DownConv2x` and `UpConv2x` lower without XLA convolutions (`conv`); the
  same values as outside it. Read at trace time: wrap the traced function, not its call
  (`partitioned_trace`)."""
  global _PARTITIONED
  before, _PARTITIONED = _PARTITIONED, True
  try:
    yield
  finally:
    _PARTITIONED = before


def partitioned_trace(fn: Callable) -> Callable:
  """`fn` traced inside `spatially_partitioned`, for `jax.jit`: a new function object, so that no
  trace made outside it is reused."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with spatially_partitioned():
      return fn(*args, **kwargs)

  return traced


# How `Conv` lowers stride-1 kernels larger than 1: 'auto' (the default: matmul on CPU, lax
# elsewhere, where cuDNN / the TPU convolution units are fast), 'xla' (`lax.conv_general_dilated`)
# or 'matmul' (`_conv_matmul`). On an idle 2-core AMD EPYC the UA-MT step at 64x64x48 takes 12.5 s
# through XLA:CPU's convolution, 6.9 s as matmuls and about 5 s as matmuls with the output barrier
# kept (docs/benchmarks.md); it compiles about 1.4x slower. Read at trace time, so tests and
# benchmarks may set it before jitting.
CONV_LOWERING = os.environ.get('JAXSEG_CONV_LOWERING', 'auto')
_CONV_LOWERINGS = ('auto', 'xla', 'matmul')


def conv_lowering() -> str:
  """'xla' or 'matmul': what `CONV_LOWERING` (env JAXSEG_CONV_LOWERING) resolves to here."""
  if CONV_LOWERING not in _CONV_LOWERINGS:
    raise ConfigError(
      f'JAXSEG_CONV_LOWERING / layers.CONV_LOWERING is {CONV_LOWERING!r}; expected one of '
      f'{_CONV_LOWERINGS}'
    )
  if CONV_LOWERING == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return CONV_LOWERING


def _use_matmul_conv(kernel_size, pad, strides) -> bool:
  # The matmul form covers stride 1 with padding 0..k-1 per axis (its input gradient is the same
  # form with padding k-1-p); 1x1 kernels are already a single matmul inside XLA.
  return (
    math.prod(kernel_size) > 1
    and all(s == 1 for s in strides)
    and all(0 <= p < k for p, k in zip(pad, kernel_size))
    and conv_lowering() == 'matmul'
  )


def _acc_dtype(dtype: Dtype) -> Dtype:
  # Matmuls accumulate in float32 at least: a bf16 sum over taps and channels, or over every voxel
  # for the kernel gradient, would otherwise lose digits.
  return jnp.promote_types(dtype, jnp.float32)


def _last_axis_taps(x: Array, kernel_size: Sequence[int], pad: Sequence[int]) -> Array:
  """`[B, *S, C]` -> `[B, *(S[:-1] + 2p[:-1]), S'[-1], k[-1] * C]`: zero-padded on every spatial
  axis, the k[-1] windows along the last one concatenated on channels (tap-major, then channel),
  S' = S + 2p - k + 1."""
  x = jnp.pad(x, [(0, 0), *((p, p) for p in pad), (0, 0)])
  out = x.shape[-2] - kernel_size[-1] + 1
  return jnp.concatenate([x[..., t : t + out, :] for t in range(kernel_size[-1])], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul(x: Array, kernel: Array, pad: tuple[int, ...]) -> Array:
  """Stride-1 convolution `[B, *S, I]` x (*k, I, O) with zero padding `pad` (0 <= p < k per axis)
  -> `[B, *S', O]`, S' = S + 2p - k + 1, as one matmul and a sum of shifted slices; same values as
  `lax.conv_general_dilated` (tests/test_layers.py).

  The last axis's k[-1] taps are concatenated on channels (`_last_axis_taps`, k[-1] times the
  input, not prod(k) times as im2col), one matmul to prod(k[:-1]) * O channels gives every other
  tap's contribution at every padded position, and the output sums those contributions shifted by
  their tap. XLA:CPU runs this 2x faster than its own convolution (docs/benchmarks.md).

  The custom VJP keeps the backward in the same form: the input gradient is this convolution of
  the output gradient with the spatially flipped, in/out-swapped kernel and padding k-1-p; the
  kernel gradient is one matmul of the (recomputed) last-axis taps with the output gradient placed
  at each other tap's offset. Only `x` and `kernel` are saved.
  """
  ks, cin, cout = kernel.shape[:-2], kernel.shape[-2], kernel.shape[-1]
  nd = len(ks)
  taps = _last_axis_taps(x, ks, pad)
  # (*k, I, O) -> (k[-1], I, *k[:-1], O): rows match the tap-major channels of `taps`.
  w = jnp.moveaxis(kernel, (nd - 1, nd), (0, 1)).reshape(ks[-1] * cin, -1)
  z = lax.dot_general(
    taps, w, (((taps.ndim - 1,), (0,)), ((), ())), preferred_element_type=_acc_dtype(x.dtype)
  )
  out = taps.shape[1:-2]
  out = [s - k + 1 for s, k in zip(out, ks[:-1])]
  y = 0
  for i, t in enumerate(itertools.product(*(range(k) for k in ks[:-1]))):
    window = tuple(slice(a, a + o) for a, o in zip(t, out))
    y = y + z[(slice(None), *window, slice(None), slice(i * cout, (i + 1) * cout))]
  # Without the barrier XLA fuses this sum of slices into every consumer of the output (bias, the
  # batch-norm statistics, the normalisation), each then reading all of `z`, prod(k[:-1]) times the
  # output's size, again: a third of the UA-MT step on XLA:CPU (docs/benchmarks.md). XLA:CPU keeps
  # the barrier only with its `cse_barrier_expander` pass off, which `jaxseg.xla_cpu` arranges.
  return lax.optimization_barrier(y.astype(x.dtype))


def _conv_matmul_fwd(x, kernel, pad):
  return _conv_matmul(x, kernel, pad), (x, kernel)


def _conv_matmul_bwd(pad, res, g):
  x, kernel = res
  ks, nd = kernel.shape[:-2], kernel.ndim - 2
  flipped = kernel[(slice(None, None, -1),) * nd].swapaxes(-1, -2)
  dx = _conv_matmul(g, flipped, tuple(k - 1 - p for k, p in zip(ks, pad)))
  # dk[t, c] = sum_q taps(x)[q + t, c-th block] g[q]: put g at each offset t of the other axes'
  # taps (the padded extent is out + k - 1) and contract with the taps over every position at once.
  shifted = [
    jnp.pad(g, [(0, 0), *((a, k - 1 - a) for a, k in zip(t, ks[:-1])), (0, 0), (0, 0)])
    for t in itertools.product(*(range(k) for k in ks[:-1]))
  ]
  taps = _last_axis_taps(x, ks, pad)
  positions = tuple(range(taps.ndim - 1))
  dk = lax.dot_general(
    taps,
    jnp.concatenate(shifted, -1),
    ((positions, positions), ((), ())),
    preferred_element_type=_acc_dtype(kernel.dtype),
  )
  # (k[-1] * I, prod(k[:-1]) * O) -> (k[-1], I, *k[:-1], O) -> (*k, I, O).
  dk = dk.reshape(ks[-1], kernel.shape[-2], *ks[:-1], kernel.shape[-1])
  return dx, jnp.moveaxis(dk, (0, 1), (nd - 1, nd)).astype(kernel.dtype)


_conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


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
    if self.fast or _PARTITIONED:
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
    if self.fast or _PARTITIONED:
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
      split = _block_split(x.shape)
      mean = _blocked_sum(xs, split) / n
      centered = xs - _blocked_broadcast(mean, x.shape, split)
      var = _blocked_sum(jnp.square(centered), split) / n  # Two-pass: biased, well conditioned.
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1 - m) * ra_var.value + m * var * (n / (n - 1))).astype(ra_var.value.dtype)
      inv = lax.rsqrt(var + self.epsilon) * scale.astype(sdt)
      y = centered * _blocked_broadcast(inv, x.shape, split)
      y = y + _blocked_broadcast(bias.astype(sdt), x.shape, split)
    else:
      mean, var = ra_mean.value.astype(sdt), ra_var.value.astype(sdt)
      y = (xs - mean) * lax.rsqrt(var + self.epsilon) * scale.astype(sdt) + bias.astype(sdt)
    return y.astype(out_dtype)


# Train-mode batch norm sums over n = batch x voxels values per channel, in its statistics and, by
# autodiff (the transposes of their broadcasts), in its gradients: the sums of dy and dy * xhat
# that give the scale and bias gradients, where the terms cancel. Summed in one pass, a backend's
# order decides the float32 error: on an AMD EPYC, XLA:CPU's serial loops at -O0 and YNNPACK's
# reduce fusion left scale / bias gradients up to 2e-2 of their scale from a float64 reference,
# where torch (which accumulates its CPU batch-norm sums in double) is 1e-5 away. Two stages, an
# inner sum over the trailing axes and an outer one over the leading axes, with an optimization
# barrier between them so that XLA cannot merge them back, bound the error by about
# (inner + outer) u instead of n u, whatever order each stage runs in.
def _block_split(shape: Sequence[int]) -> int:
  """The axis that splits the reduced axes (all but the last) of `shape` into leading (outer) and
  trailing (inner) groups of the most balanced sizes; 0 when there is only one reduced axis."""
  reduced = list(shape[:-1])
  if len(reduced) < 2:
    return 0
  return min(
    range(1, len(reduced)),
    key=lambda s: math.prod(reduced[:s]) + math.prod(reduced[s:]),
  )


def _blocked_sum(x: Array, split: int) -> Array:
  """`x [*outer, *inner, C]` summed over all axes but the last, inner axes first -> `[C]`."""
  if split == 0:
    return jnp.sum(x, tuple(range(x.ndim - 1)))
  partial = lax.optimization_barrier(jnp.sum(x, tuple(range(split, x.ndim - 1))))
  return jnp.sum(partial, tuple(range(split)))


def _blocked_broadcast(v: Array, shape: Sequence[int], split: int) -> Array:
  """`v [C]` broadcast to `shape` through `[*outer, C]`: its transpose (autodiff's cotangent of
  `v`) is then the two-stage `_blocked_sum`."""
  if split == 0:
    return jnp.broadcast_to(v, shape)
  outer = lax.optimization_barrier(jnp.broadcast_to(v, (*shape[:split], shape[-1])))
  ones = (1,) * (len(shape) - 1 - split)
  return jnp.broadcast_to(outer.reshape(*shape[:split], *ones, shape[-1]), shape)


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
