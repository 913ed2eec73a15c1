"""jaxseg: semi-supervised medical image segmentation in JAX/Flax."""

from jaxseg import xla_cpu as _xla_cpu

__version__ = "0.1.0"

# Before anything starts a JAX backend: XLA reads XLA_FLAGS once per process.
_xla_cpu.apply()
