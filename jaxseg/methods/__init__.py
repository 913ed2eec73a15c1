"""Method registry: `METHODS[name]` is a class satisfying `jaxseg.methods.base.Method` (class
attributes `name`, `samples_unlabeled`, `host_targets`; `init`, `phases()`, `predict`), built from a
config by `build`. Every step is pure and jit-compiled once per phase; all randomness comes from
`jax.random.fold_in(state.rng, state.step)` and schedules are functions of `state.step`.
"""

from jaxseg.methods.acmt import ACMT
from jaxseg.methods.bcp import BCP
from jaxseg.methods.cml import CML
from jaxseg.methods.dtc import DTC
from jaxseg.methods.dycon import DyCON
from jaxseg.methods.mcf import MCF
from jaxseg.methods.mean_teacher import MeanTeacher
from jaxseg.methods.supervised import Supervised
from jaxseg.methods.uamt import UAMT
from jaxseg.methods.upc import UPC

METHODS = {
  "supervised": Supervised,
  "mean_teacher": MeanTeacher,
  "uamt": UAMT,
  "dtc": DTC,
  "upc": UPC,
  "acmt": ACMT,
  "bcp": BCP,
  "cml": CML,
  "mcf": MCF,
  "dycon": DyCON,
}


def method_class(name: str):
  """`METHODS[name]`, with an error naming the known methods."""
  if name not in METHODS:
    raise KeyError(f"config.method={name!r} is not a known method; known: {sorted(METHODS)}")
  return METHODS[name]


def build(config):
  """The Method named by `config.method`, constructed from `config`."""
  return method_class(config.method)(config)
