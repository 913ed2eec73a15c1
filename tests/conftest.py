"""Shared test set-up: CPU only, a persistent compilation cache, and the parity fixture loader.

Parity fixtures come from ``JAXSEG_PARITY_DIR`` (default ``../shared/parity`` relative to the repo
root). Where the folder is absent (a user's fresh clone) parity tests skip with a reason that says
how to get them; with ``JAXSEG_REQUIRE_PARITY=1`` (set by ``.ci/run``) a missing fixture fails.
"""
import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def parity_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXSEG_PARITY_DIR", _REPO.parent / "shared" / "parity"))


def data_dir() -> pathlib.Path:
  """Real data shipped beside the project (``../shared/data``), or ``JAXSEG_SHARED_DATA``."""
  return pathlib.Path(os.environ.get("JAXSEG_SHARED_DATA", _REPO.parent / "shared" / "data"))


# FUNCTIONS.md: rtol 1e-5 / atol 1e-6 for elementwise maps, rtol 1e-4 for scalars reduced over many voxels.
MAP_TOL = dict(rtol=1e-5, atol=1e-6)
SCALAR_TOL = dict(rtol=1e-4, atol=1e-6)


def channels_last(x):
  """Torch [B, C, ...] -> channels-last [B, ..., C]."""
  import jax.numpy as jnp
  return jnp.moveaxis(jnp.asarray(x), 1, -1)


class ParityFile:
  """One fixture file: ``cases`` (names from ``meta``), ``case(name)`` -> {key: array}, ``meta``."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.npz = np.load(path, allow_pickle=False)
    self.meta = json.loads(str(self.npz["meta"][()] if self.npz["meta"].shape == () else self.npz["meta"][0]))

  @property
  def cases(self) -> list[str]:
    """Case names as listed in ``meta['cases']`` (FUNCTIONS.md files)."""
    return list(self.meta["cases"])

  def cases_of(self, function: str, required: bool = True) -> list[str]:
    """Cases whose meta `function` is `function` (never select by case name)."""
    names = [n for n in self.cases if self.meta["cases"][n]["function"] == function]
    assert names or not required, f"no case with function {function!r} in {self.path.name}"
    return names

  def case_args(self, name: str) -> dict:
    return self.meta["cases"][name].get("args", {}) or {}

  def case(self, name: str) -> dict:
    prefix = name + "/"
    return {k[len(prefix):]: self.npz[k] for k in self.npz.files if k.startswith(prefix)}

  def group(self, prefix: str) -> dict:
    """All arrays under ``prefix/`` (NETWORKS.md files: ``param/``, ``out/``, ``grad64/`` ...)."""
    prefix = prefix.rstrip("/") + "/"
    return {k[len(prefix):]: self.npz[k] for k in self.npz.files if k.startswith(prefix)}

  def __getitem__(self, key):
    return self.npz[key]


@pytest.fixture
def parity():
  """``parity("losses_uamt.npz")`` -> ParityFile, skipping (or failing under CI) when absent."""

  def load(name: str) -> ParityFile:
    path = parity_dir() / name
    if not path.exists():
      msg = (f"parity fixture {path} not found: set JAXSEG_PARITY_DIR to the folder holding the "
             "upstream fixtures (shared/parity, see third_party/README.md)")
      if os.environ.get("JAXSEG_REQUIRE_PARITY") == "1":
        pytest.fail(msg)
      pytest.skip(msg)
    return ParityFile(path)

  return load



def tiny_config(method: str = "mean_teacher", steps: int = 4):
  """configs/smoke.py: the demo recipe at test size (n_filters 4, 16^3 patches, 8 phantoms)."""
  from jaxseg import config_lib
  return config_lib.load_config_module(_REPO / "configs" / "smoke.py").get_config(
      f"method={method},steps={steps}")


def random_batch(config, seed: int = 0) -> dict:
  """A labeled-looking batch at the config's size: bright voxels are foreground."""
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, *config.data.patch_size)
  label = (rng.random(shape) > 0.7).astype(np.int32)
  image = (rng.normal(size=shape) + 2.0 * label).astype(np.float32)[..., None]
  return {"image": jnp.asarray(image), "label": jnp.asarray(label)}


def check_short_run(config, workdir) -> dict:
  """Train and evaluate `config` end to end; every logged loss and the final Dice are finite."""
  from jaxseg import train
  summary = train.train_and_evaluate(config, workdir)
  records = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, config.total_steps + 1))
  assert all(np.isfinite(r["loss"]) for r in records)
  assert np.isfinite(summary["dice"])
  return summary
