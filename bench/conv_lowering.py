"""3x3x3 stride-1 'same' convolutions on XLA:CPU: lax.conv against matmul formulations.

  python bench/conv_lowering.py --rounds 7

Shapes are those of the VNet (n_filters 8) on a 64x64x48 patch at batch 4; the decoder repeats
the encoder's (channels, size) pairs. Every variant computes the same `[N, D, H, W, cin]` x
(3, 3, 3, cin, cout) -> `[N, D, H, W, cout]` convolution with zero padding 1 (NDHWC, kernel DHWIO):

* xla: `lax.conv_general_dilated` (what `layers.Conv` did before);
* im2col: pad, concatenate the 27 shifted views on the channel axis, one matmul
  `[N*D*H*W, 27*cin] @ [27*cin, cout]`; backward by autodiff;
* w_taps: `layers._conv_matmul` (what `layers.Conv` uses on CPU now): the 3 taps along W
  concatenated on channels (`[N, D+2, H+2, W, 3*cin]`), one matmul to 9*cout channels, the sum of
  the 9 (D, H)-shifted slices of that; custom VJP: the input gradient is the same form with the
  flipped, in/out-swapped kernel, the kernel gradient one matmul of the W taps with the output
  gradient padded to each (D, H) offset;
* shift27: 27 shifted `[M, cin] @ [cin, cout]` matmuls, summed;
* hw9: the 9 in-plane taps concatenated (`[N, D+2, H, W, 9*cin]`), 3 matmuls over depth, summed;
* xla_ncdhw: `lax.conv_general_dilated` in NCDHW / OIDHW layout (transposes included).

Each variant's forward and both gradients are checked against xla (largest deviation relative to
the reference's largest magnitude, must be <= 1e-5). Variants are timed round-robin within this
one process (the machine is shared, so all see the same load): jit, block_until_ready, median of
`--rounds` calls after one warm-up call. Prints a Markdown table of median ms.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from jaxseg.models import layers  # noqa: E402

# (cin, cout, D, H, W) at batch 4: VNet n_filters 8 on 64x64x48 (block_one, block_nine; two/eight;
# three/seven; four/six; five).
CASES = (
  (1, 8, 64, 64, 48),
  (8, 8, 64, 64, 48),
  (16, 16, 32, 32, 24),
  (32, 32, 16, 16, 12),
  (64, 64, 8, 8, 6),
  (128, 128, 4, 4, 3),
)
BATCH = 4
TOL = 1e-5


def _views(xp, size, taps):
  """The shifted views xp[:, a:a+D, b:b+H, c:c+W] for each (a, b, c) in `taps`."""
  d, h, w = size
  return [xp[:, a : a + d, b : b + h, c : c + w] for a, b, c in taps]


def xla(x, k):
  return lax.conv_general_dilated(
    x, k, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')
  )


def xla_ncdhw(x, k):
  y = lax.conv_general_dilated(
    x.transpose(0, 4, 1, 2, 3),
    k.transpose(4, 3, 0, 1, 2),
    (1, 1, 1),
    [(1, 1)] * 3,
    dimension_numbers=('NCDHW', 'OIDHW', 'NCDHW'),
  )
  return y.transpose(0, 2, 3, 4, 1)


def im2col(x, k):
  xp = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
  cols = jnp.concatenate(_views(xp, x.shape[1:4], itertools.product(range(3), repeat=3)), -1)
  return jnp.einsum('ndhwk,ko->ndhwo', cols, k.reshape(-1, k.shape[-1]))


def w_taps(x, k):
  return layers._conv_matmul(x, k, (1, 1, 1))


def shift27(x, k):
  xp = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
  taps = list(itertools.product(range(3), repeat=3))
  views = _views(xp, x.shape[1:4], taps)
  return sum(jnp.einsum('ndhwi,io->ndhwo', v, k[t]) for v, t in zip(views, taps))


def hw9(x, k):
  d, h, w = x.shape[1:4]
  xp = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
  planes = jnp.concatenate(
    [xp[:, :, b : b + h, c : c + w] for b, c in itertools.product(range(3), repeat=2)], -1
  )
  kd = k.reshape(3, -1, k.shape[-1])
  return sum(jnp.einsum('ndhwk,ko->ndhwo', planes[:, a : a + d], kd[a]) for a in range(3))


VARIANTS = {
  'xla': xla,
  'im2col': im2col,
  'w_taps': w_taps,
  'shift27': shift27,
  'hw9': hw9,
  'xla_ncdhw': xla_ncdhw,
}


def _fwd_bwd(fn):
  # Gradients w.r.t. input and kernel of <conv(x, k), g> for a fixed cotangent g.
  def f(x, k, g):
    y, vjp = jax.vjp(fn, x, k)
    return (y, *vjp(g))

  return jax.jit(f)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=7, help='timed calls per (case, variant, mode)')
  p.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated subset')
  p.add_argument('--cases', default='', help='indices into CASES (comma-separated); all if empty')
  args = p.parse_args(argv)
  names = args.variants.split(',')
  if 'xla' not in names:
    names = ['xla', *names]
  cases = [CASES[int(i)] for i in args.cases.split(',')] if args.cases else CASES
  rng = np.random.default_rng(0)
  rows = []
  for cin, cout, d, h, w in cases:
    x = jnp.asarray(rng.standard_normal((BATCH, d, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, cin, cout)) / np.sqrt(27 * cin), jnp.float32)
    g = jnp.asarray(rng.standard_normal((BATCH, d, h, w, cout)), jnp.float32)
    fns = {}
    for n in names:
      fns[(n, 'fwd')] = (jax.jit(VARIANTS[n]), (x, k))
      fns[(n, 'fwd+bwd')] = (_fwd_bwd(VARIANTS[n]), (x, k, g))
    ref = jax.block_until_ready(fns[('xla', 'fwd+bwd')][0](x, k, g))
    errs = {}
    for n in names:
      out = jax.block_until_ready(fns[(n, 'fwd+bwd')][0](x, k, g))
      errs[n] = max(_rel_err(a, b) for a, b in zip(out, ref))
      if errs[n] > TOL:
        raise SystemExit(f'{n} at {(cin, cout, d, h, w)}: relative deviation {errs[n]:.2e} > {TOL}')
      jax.block_until_ready(fns[(n, 'fwd')][0](x, k))
    times = {key: [] for key in fns}
    for _ in range(args.rounds):
      for key, (fn, a) in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times[key].append(time.perf_counter() - t0)
    for n in names:
      rows.append(
        (
          f'{cin}->{cout} @ {d}x{h}x{w}',
          n,
          1e3 * np.median(times[(n, 'fwd')]),
          1e3 * np.median(times[(n, 'fwd+bwd')]),
          errs[n],
        )
      )
    print(f'done {cin}->{cout} @ {d}x{h}x{w}', file=sys.stderr, flush=True)
  print(
    f'\nbatch {BATCH}, float32, {jax.default_backend()}, {os.cpu_count()} CPUs, '
    f'median of {args.rounds}, load average {os.getloadavg()}\n'
  )
  print('| conv | variant | fwd ms | fwd+bwd ms | max rel. dev. |')
  print('|---|---|---:|---:|---:|')
  for case, n, f, fb, e in rows:
    print(f'| {case} | {n} | {f:.1f} | {fb:.1f} | {e:.1e} |')


if __name__ == '__main__':
  main()
