"""jaxseg's XLA:CPU default, added to XLA_FLAGS when jaxseg is imported, before JAX starts a backend.

One flag, `--xla_disable_hlo_passes=cse_barrier_expander`. XLA:CPU's optimization-barrier expander
(the pass named cse_barrier_expander) deletes every `lax.optimization_barrier` before fusion. With
it off the barriers stay where jaxseg puts them:
- after each convolution expressed as matmuls (`jaxseg.models.layers._conv_matmul`, the CPU
  default), so that the sum of its shifted slices is written once instead of being fused into, and
  recomputed by, every consumer of the output: the UA-MT step at 64x64x48 goes from 6.9 s to about
  5 s on a 2-core AMD EPYC (docs/benchmarks.md);
- in `model.remat`'s recomputation, which XLA:CPU otherwise merges back into the forward, so that
  remat saves no memory there.
Numbers are unchanged: a barrier only decides what is materialised (the whole test suite runs under
this default).

It is added only when the process runs on the CPU alone (JAX_PLATFORMS names only cpu, or no GPU or
TPU plugin is installed); never when XLA_FLAGS already sets `--xla_disable_hlo_passes` (the user's
setting stands); never once a backend has started (XLA reads XLA_FLAGS once per process: import
jaxseg before running anything in JAX); and not at all with JAXSEG_XLA_CPU_DEFAULTS=0.
"""

import importlib.util
import os
import sys

DEFAULT_FLAGS = ("--xla_disable_hlo_passes=cse_barrier_expander",)
# Installed with jax[cuda12] / jax[cuda13] / jax[rocm] / jax[tpu]: their presence means the process
# may start an accelerator backend, whose compiler pipeline these flags are not measured on.
ACCELERATOR_MODULES = (
  "jax_cuda12_plugin",
  "jax_cuda13_plugin",
  "jax_rocm60_plugin",
  "jax_rocm7_plugin",
  "libtpu",
)


def cpu_only(environ) -> bool:
  """Whether JAX will run on the CPU alone: JAX_PLATFORMS lists only 'cpu', or, unset, no
  accelerator plugin is importable."""
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return all(p == "cpu" for p in platforms)
  return not any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_MODULES)


def flags_to_add(environ) -> list[str]:
  """The DEFAULT_FLAGS that `environ` should get: none when switched off or not on the CPU alone,
  and none whose flag name XLA_FLAGS already sets."""
  if environ.get("JAXSEG_XLA_CPU_DEFAULTS", "1") == "0" or not cpu_only(environ):
    return []
  current = environ.get("XLA_FLAGS", "")
  return [f for f in DEFAULT_FLAGS if f.split("=")[0] not in current]


def _backend_started() -> bool:
  if "jax" not in sys.modules:  # nothing has started; and importing jaxseg.config_lib stays light
    return False
  from jax._src import xla_bridge

  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started()) if started is not None else False


def apply(environ=None) -> list[str]:
  """Adds `flags_to_add(environ)` (default os.environ) to its XLA_FLAGS unless a backend has
  started; returns what it added."""
  environ = os.environ if environ is None else environ
  if _backend_started():
    return []
  added = flags_to_add(environ)
  if added:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *added]).strip()
  return added
