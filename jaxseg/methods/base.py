"""The method protocol: what the training loop, evaluation, the benchmark and the data builder
may rely on, and nothing more.

A method is a class registered by name in `jaxseg.methods.METHODS` and built from a config
(`METHODS[name](config)`). The loop never asks which method it runs: everything it needs to know
is declared here.
"""

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np

# A host-side target: the augmented label crop [D, H, W] (or [H, W]) int -> a float32 array that
# the data pipeline adds to the example under the target's name (e.g. DTC's signed distance map).
HostTarget = Callable[[np.ndarray], np.ndarray]
# The `host_targets` of a method that needs none (read-only, so no class can mutate a shared dict).
NO_HOST_TARGETS: Mapping[str, HostTarget] = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a run (docs/design.md "phases": BCP and CML pre-train, then self-train).

  Phase i runs the global steps [start_i, start_{i+1}) with its own `train_step` (each compiled
  once); the last phase runs to `config.total_steps`. `enter(state) -> state`, when given, is
  applied once right before the phase's first step (e.g. teacher := student, fresh momentum). It
  must keep the state's pytree structure: checkpoints of every phase restore against `init`'s.
  """

  name: str
  start: int
  train_step: Callable
  enter: Callable | None = None


@runtime_checkable
class Method(Protocol):
  """One semi-supervised (or supervised) method.

  Class attributes (read before the method is built, e.g. by config validation and the data
  builder):
    name: the registry key.
    samples_unlabeled: whether a batch holds unlabeled samples after the labeled ones
      (`labeled_batch_size < batch_size`); False for the supervised baseline, whose batches are
      all labeled and whose sampler never draws from the unlabeled pool.
    host_targets: name -> `HostTarget` computed on the host per example by the data pipeline and
      added to the batch under that name ([B, *patch] float32), e.g. {'sdf': compute_sdf}.

  Instance attributes: `model` (a Flax module) and `tx` (an optax transformation), static and never
  in the state.

  Methods (pure functions of their arguments):
    init(rng, example_batch) -> TrainState.
    phases() -> tuple[Phase, ...]: the stages of a run in order, each with its own jitted
      train_step(state, batch) -> (state, metrics); one-stage methods return a single phase.
    predict(state, images [B, *spatial, C]) -> probabilities [B, *spatial, n_classes]: the
      network(s) the upstream test script evaluates.
  """

  name: ClassVar[str]
  samples_unlabeled: ClassVar[bool]
  host_targets: ClassVar[Mapping[str, HostTarget]]
  model: Any
  tx: Any

  def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> Any: ...

  def phases(self) -> tuple[Phase, ...]: ...

  def predict(self, state: Any, images: jax.Array) -> jax.Array: ...


def example_batch(
  config: ml_collections.ConfigDict,
  host_targets: Mapping[str, HostTarget] = None,
  batch_size: int | None = None,
) -> dict[str, np.ndarray]:
  """A zero batch with the shapes and dtypes the pipeline yields for `config`:
  image float32 [B, *patch, 1], label int32 [B, *patch], and one float32 [B, *patch] entry per
  host target. Used to initialise and trace a method (train loop, evaluation, bench)."""
  b = config.batch_size if batch_size is None else batch_size
  shape = (b, *config.data.patch_size)
  batch = {"image": np.zeros((*shape, 1), np.float32), "label": np.zeros(shape, np.int32)}
  for key, fn in (host_targets or {}).items():
    batch[key] = np.stack([np.asarray(fn(l), np.float32) for l in batch["label"]])
  return batch


def phases_of(method: Method) -> tuple[Phase, ...]:
  """`method.phases()`, checked: the first starts at step 0 and the starts strictly increase."""
  phases = tuple(method.phases())
  starts = [p.start for p in phases]
  if not phases or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
    raise ValueError(
      f"{type(method).__name__}.phases() must start at step 0 with strictly "
      f"increasing starts; got {[(p.name, p.start) for p in phases]}"
    )
  return phases


def phase_at(phases: tuple[Phase, ...], step: int) -> Phase:
  """The phase that runs global step `step` (0-based)."""
  return [p for p in phases if p.start <= step][-1]
