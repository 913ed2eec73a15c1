"""Method registry.

A Method is built from a config and exposes:
  * `model` (a Flax module) and `tx` (an optax transformation): static, not in the state;
  * `init(rng, example_batch) -> TrainState`;
  * `train_step(state, batch) -> (state, metrics)`: pure, jit-compiled once per run; all
    randomness from `jax.random.fold_in(state.rng, state.step)`; schedules are functions of
    `state.step`;
  * `predict(state, images) -> probabilities`: the network(s) the upstream test script evaluates.
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


def build(config):
  """The Method named by `config.method`, constructed from `config`."""
  if config.method not in METHODS:
    raise KeyError(f"config.method={config.method!r} is not a known method; known: {sorted(METHODS)}")
  return METHODS[config.method](config)
