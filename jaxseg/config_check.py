"""Config validation: fail early, naming the field, on a config that cannot run.

Kept apart from jaxseg/config_lib.py so that configs stay pure data: checking a method name needs
the method registry (and with it flax, optax and every model), which a config never imports.
"""

import ml_collections

from jaxseg import errors


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise errors.ConfigError (a ValueError) 'invalid config: <field> ...' on the first problem found.

  The method must be registered in `jaxseg.methods.METHODS`; its class attribute
  `samples_unlabeled` (jaxseg/methods/base.py) decides the batch rule: a method that samples
  unlabeled data needs labeled_batch_size < batch_size, one that does not needs them equal."""
  from jaxseg import methods  # the registry; importing it builds every method module

  def need(cond, msg):
    if not cond:
      raise errors.ConfigError(f"invalid config: {msg}")

  need(
    config.method in methods.METHODS,
    f"method={config.method!r} is not one of {sorted(methods.METHODS)}",
  )
  need(config.total_steps >= 1, f"total_steps={config.total_steps} must be >= 1")
  runs = config.get("runs", 1)  # a run folder's config.json from before the runs axis: one run
  need(
    isinstance(runs, int) and not isinstance(runs, bool) and runs >= 1,
    f"runs={runs!r} must be a positive integer (the number of replicas, seeds seed..seed+runs-1)",
  )
  need(
    0 < config.labeled_batch_size <= config.batch_size,
    f"labeled_batch_size={config.labeled_batch_size} must be in 1..batch_size={config.batch_size}",
  )
  if methods.METHODS[config.method].samples_unlabeled:
    need(
      config.labeled_batch_size < config.batch_size,
      f"method {config.method} needs unlabeled samples: labeled_batch_size="
      f"{config.labeled_batch_size} must be < batch_size={config.batch_size}",
    )
  else:
    need(
      config.labeled_batch_size == config.batch_size,
      f"method {config.method} trains on labeled data only: labeled_batch_size="
      f"{config.labeled_batch_size} must equal batch_size={config.batch_size}",
    )
  # ACDC counts labeled PATIENTS (their slices fill the batch); the sampler checks the slice count.
  need(
    config.data.name == "acdc" or config.data.labeled >= config.labeled_batch_size,
    f"data.labeled={config.data.labeled} is smaller than labeled_batch_size={config.labeled_batch_size}",
  )
  from jaxseg import models  # imported by the method registry above already

  need(
    config.model.name in models.MODELS,
    f"model.name={config.model.name!r} is not one of {sorted(models.MODELS)}",
  )
  remat = config.model.get("remat", False)
  need(isinstance(remat, bool), f"model.remat={remat!r} must be True or False")
  need(
    not remat or models.supports_remat(config.model.name),
    models.remat_unsupported(config.model.name),
  )
  n_classes = config.model.kwargs.get("n_classes")
  # A single-logit sigmoid head (DTC) serves a binary task.
  need(
    n_classes == config.data.num_classes or (n_classes == 1 and config.data.num_classes == 2),
    f"model.kwargs.n_classes={n_classes} differs from data.num_classes={config.data.num_classes}",
  )
  for p in config.data.patch_size:
    need(
      p % 16 == 0,
      f"data.patch_size={tuple(config.data.patch_size)}: every side must be divisible "
      "by 16 (VNet has four stride-2 downsamplings)",
    )
  # A tuple flag given twice (`--config.data.spacing=... --config.data.spacing=...`) is
  # concatenated by the flag parser, not replaced: a 6-tuple spacing would pass silently.
  spacing = config.data.get("spacing")
  if spacing is not None:
    need(
      len(spacing) == len(config.data.patch_size) and all(s > 0 for s in spacing),
      f"data.spacing={tuple(spacing)}: must be {len(config.data.patch_size)} positive mm values, "
      f"one per axis of data.patch_size={tuple(config.data.patch_size)} (a tuple flag given "
      "twice is concatenated)",
    )
  # Grain worker processes stream the same batches (tests/test_pipeline.py) but their iterator
  # state did not survive an orbax save/restore round trip here; threads (worker_count 0, the
  # default) prefetch enough for these crop-and-flip pipelines.
  need(
    config.data.get("worker_count", 0) == 0,
    f"data.worker_count={config.data.get('worker_count')}: only 0 (threaded prefetch) supports "
    "checkpoint resume; use 0",
  )
  need(
    config.eval.mode in ("parity", "clean"),
    f"eval.mode={config.eval.mode!r}: must be 'parity' or 'clean'",
  )
