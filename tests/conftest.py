"""Shared test set-up: CPU only, a persistent compilation cache, fast XLA compiles, and the parity
fixture loader.

The suite is compile-bound (tiny shapes, many distinct 3D programs), so tests compile with XLA's
LLVM backend at -O0 (``TEST_XLA_FLAGS``): the same HLO, the same float32 semantics, about half the
compile time (tests/test_uamt.py + test_mean_teacher.py on a cold cache: 250 s -> 142 s). A
caller's own ``XLA_FLAGS`` replaces it. Subprocesses that need N host devices take
``xla_flags(n)``, which keeps it.

The suite also traces convolutions with XLA's own convolution (``JAXSEG_CONV_LOWERING=xla``, what
GPU and TPU runs use) rather than the CPU default's matmul form (``jaxseg.models.layers.conv``),
whose larger programs take about a quarter longer to trace and compile (tests/test_uamt.py +
test_mean_teacher.py on a cold cache: 159 s -> 124 s). The matmul form keeps its own tests: every
convolution kind against lax in values and gradients (test_layers.py), the V-Net against the
upstream outputs under both lowerings (test_vnet.py), and every run on a mesh with a "space" axis,
which always uses it.

Parity fixtures come from ``JAXSEG_PARITY_DIR`` (default ``../shared/parity`` relative to the repo
root). Where the folder is absent (a user's fresh clone) parity tests skip with a reason that says
how to get them; with ``JAXSEG_REQUIRE_PARITY=1`` (set by ``.ci/run``) a missing fixture fails.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_REPO / ".jax_cache"))
# Every program is cached, the small ones too: a subprocess that builds a model eagerly compiles
# one small program per op and shape (la_mt.py:smoke=1's init: 10.3 s in each new process with
# the 0.5 s floor, 3.6 s from the cache).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("JAXSEG_CONV_LOWERING", "xla")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def xla_flags(n_devices: int) -> str:
  """This process's XLA_FLAGS with `n_devices` simulated host devices, for a subprocess."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}"


def parity_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXSEG_PARITY_DIR", _REPO.parent / "shared" / "parity"))


def data_dir() -> pathlib.Path:
  """Real data shipped beside the project (``../shared/data``), or ``JAXSEG_SHARED_DATA``."""
  return pathlib.Path(os.environ.get("JAXSEG_SHARED_DATA", _REPO.parent / "shared" / "data"))


def require_shared_data(path: pathlib.Path) -> None:
  """Skip when the shared real data at `path` is absent (a user's fresh clone); fail instead under
  JAXSEG_REQUIRE_PARITY=1 (CI has shared/ beside the checkout)."""
  if path.exists():
    return
  msg = f"real data not found at {path} (set JAXSEG_SHARED_DATA to the shared/data folder)"
  if os.environ.get("JAXSEG_REQUIRE_PARITY") == "1":
    pytest.fail(msg)
  pytest.skip(msg)


def run_script(script: str, *args: str, n_devices: int = 1, env=None, timeout: int = 900):
  """Runs python `-c script args` from the repo root with `n_devices` simulated CPU devices (env:
  `env` or this process's, XLA_FLAGS from `xla_flags`); asserts it succeeded and returns the JSON
  of its last stdout line."""
  env = dict(os.environ if env is None else env)
  env.update(XLA_FLAGS=xla_flags(n_devices), JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", script, *args],
    cwd=_REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def require_import(name: str):
  """`pytest.importorskip(name)` in a user's environment; under JAXSEG_REQUIRE_PARITY=1 (CI, which
  installs the dev and torchcheck extras) a missing module is an import error, not a skip."""
  if os.environ.get("JAXSEG_REQUIRE_PARITY") == "1":
    return importlib.import_module(name)
  return pytest.importorskip(name)


# Function fixtures (docs/parity.md "Tolerances"): rtol 1e-5 / atol 1e-6 for elementwise maps,
# rtol 1e-4 for scalars reduced over many voxels.
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
    self.meta = json.loads(
      str(self.npz["meta"][()] if self.npz["meta"].shape == () else self.npz["meta"][0])
    )

  @property
  def cases(self) -> list[str]:
    """Case names as listed in ``meta['cases']`` (function fixtures, docs/parity.md)."""
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
    return {k[len(prefix) :]: self.npz[k] for k in self.npz.files if k.startswith(prefix)}

  def group(self, prefix: str) -> dict:
    """All arrays under ``prefix/`` (network fixtures, docs/parity.md: ``param/``, ``out/``,
    ``grad64/`` ...)."""
    prefix = prefix.rstrip("/") + "/"
    return {k[len(prefix) :]: self.npz[k] for k in self.npz.files if k.startswith(prefix)}

  def __getitem__(self, key):
    return self.npz[key]


@pytest.fixture
def parity():
  """``parity("losses_uamt.npz")`` -> ParityFile, skipping (or failing under CI) when absent."""

  def load(name: str) -> ParityFile:
    path = parity_dir() / name
    if not path.exists():
      msg = (
        f"parity fixture {path} not found: set JAXSEG_PARITY_DIR to the folder holding the "
        "upstream fixtures (shared/parity, see third_party/README.md)"
      )
      if os.environ.get("JAXSEG_REQUIRE_PARITY") == "1":
        pytest.fail(msg)
      pytest.skip(msg)
    return ParityFile(path)

  return load


def tiny_config(method: str = "mean_teacher", steps: int = 4):
  """The LA config of `method` (configs/la_*.py whose config.method it is) at `smoke=1`
  (n_filters 4, 16^3 patches, 8 phantoms, 4 labeled), run for `steps` steps."""
  from jaxseg import config_lib

  for path in sorted((_REPO / "configs").glob("la_*.py")):
    config = config_lib.load_config_module(path).get_config("smoke=1,labeled=4,seed=0")
    if config.method == method:
      config.total_steps = steps
      return config
  raise ValueError(f"tiny_config: no configs/la_*.py has method {method!r}")


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
  records = [
    json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in records] == list(range(1, config.total_steps + 1))
  assert all(np.isfinite(r["loss"]) for r in records)
  assert np.isfinite(summary["dice"])
  return summary


# --- Network parity (docs/parity.md "Network fixtures"), shared by tests/test_<network>.py.
# A fixture's output groups ('out', 'train_out', 'lossw') hold keys '0', '1', ... in the forward's
# return order, named by meta['outputs']; every helper loops over what the file holds.

# Output tolerances (docs/parity.md "Tolerances"). The fixtures hold upstream's float32 outputs
# only; the float64 value of the same weights is jaxseg's float64 forward, whose distance to
# upstream's float32 output is the reference's own rounding error on that seed and shape. The
# float32 port may miss by NOISE_FACTOR times that error (two float32 roundings of similar size,
# with margin), never less than FLOOR_TOL. A wrong layer moves the float64 forward as well and
# would widen its own tolerance, so the reference error must look like rounding: at most
# REFERENCE_NOISE_CAP of the output's scale (float32 rounding stays under 2e-5 of it in every
# fixture set), and at most REFERENCE_NOISE_RATIO times jaxseg's own float32 error
# |forward32 - forward64| (plus one float32 ulp of the scale), in which a port error cancels (the
# two rounding errors are within a factor 0.35..1.9 of each other on every shared output).
NOISE_FACTOR = 4.0
REFERENCE_NOISE_CAP = 1e-4
REFERENCE_NOISE_RATIO = 8.0
FLOOR_TOL = dict(rtol=1e-4, atol=1e-5)


def all_eqns(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations (scan, cond, pjit, ...)."""
  import jax.extend

  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from all_eqns(sub)


def as_tuple(out) -> tuple:
  """A forward's return value as a tuple (a single array becomes a 1-tuple)."""
  return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def fixture_outputs(group: dict) -> list:
  """A fixture output group ('out', 'train_out', 'lossw') in return order, channels-last."""
  return [np.moveaxis(np.asarray(group[k]), 1, -1) for k in sorted(group, key=int)]


def network_fixture(parity, fixture: str, model_name: str, kwargs_of=None):
  """(ParityFile, model kwargs, imported variables, channels-last input) of a network fixture.

  `kwargs_of(pf)` maps it to jaxseg constructor kwargs (default: its constructor_kwargs)."""
  from jaxseg.models import torch_import

  pf = parity(fixture)
  kwargs = dict(kwargs_of(pf) if kwargs_of else pf.meta["constructor_kwargs"])
  variables = torch_import.import_state_dict(model_name, pf.group("param"), **kwargs)
  return pf, kwargs, variables, channels_last(pf["input"])


def leaf(tree, entry):
  """The leaf of a variables tree at a torch_import `Entry` (or a bare key path)."""
  path = getattr(entry, "path", entry)
  for k in path:
    tree = tree[k]
  return tree


def float64_outputs(model, forward, variables, x, with_state: bool = False) -> tuple:
  """Outputs (float64 numpy, return order) of jitted `forward(model, variables, x)` run by the
  float64 clone of `model` on the float32 variables and input upcast: the float64 value of the
  fixture's weights. `with_state`: the forward returns (outputs, updated collections)."""
  import jax
  import jax.numpy as jnp

  with jax.enable_x64(True):
    up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    out = jax.jit(forward, static_argnums=0)(model.clone(dtype=jnp.float64), up(variables), up(x))
    return tuple(np.asarray(o, np.float64) for o in as_tuple(out[0] if with_state else out))


def assert_forward_matches(pf, group: str, model, forward, variables, x, with_state: bool = False):
  """Jitted `forward(model, variables, x)` matches fixture group `group` ('out' or 'train_out')
  output by output, within a tolerance derived from the reference's own float32 error (the rule
  above): per output, err = max|float64 forward - upstream float32| must be at most
  REFERENCE_NOISE_CAP * max|upstream| and REFERENCE_NOISE_RATIO * (max|float32 forward - float64
  forward| + ulp); then rtol 1e-4, atol max(1e-5, NOISE_FACTOR * err). Returns the float32
  forward's return value (with `with_state`, (outputs, updated collections))."""
  import jax

  result = jax.jit(forward, static_argnums=0)(model, variables, x)
  got = as_tuple(result[0] if with_state else result)
  ref64 = float64_outputs(model, forward, variables, x, with_state)
  want, names = fixture_outputs(pf.group(group)), pf.meta["outputs"]
  assert len(got) == len(ref64) == len(want) == len(names), (group, len(got), len(want), names)
  for name, g, r, w in zip(names, got, ref64, want):
    assert g.shape == w.shape, (group, name, g.shape, w.shape)
    err, scale = float(np.abs(r - w).max()), float(np.abs(w).max())
    ulp = float(np.finfo(np.float32).eps) * scale
    own = float(np.abs(np.asarray(g, np.float64) - r).max()) + ulp
    assert err <= min(REFERENCE_NOISE_CAP * scale, REFERENCE_NOISE_RATIO * own), (
      f"{pf.path.name} {group} {name}: the float64 forward is {err:.3e} from upstream's float32 "
      f"output (max|output| {scale:.3e}; jaxseg's own float32 error {own:.3e}), beyond float32 "
      "rounding: a port error"
    )
    np.testing.assert_allclose(
      g,
      w,
      rtol=FLOOR_TOL["rtol"],
      atol=max(FLOOR_TOL["atol"], NOISE_FACTOR * err),
      err_msg=f"{pf.path.name} {group} {name} (reference error {err:.3e})",
    )
  return result


def assert_bn_stats_match(pf, key_map, updated_batch_stats, n_leaves=None, unmapped=None) -> set:
  """BN running stats after the train forward vs `bn_after_train/` (rtol 1e-4, atol 1e-5); returns
  the names checked. `n_leaves`: how many must be checked (the model's batch_stats leaf count).
  `unmapped(name)`: accepts fixture entries the port does not build (they must equal `param/`, i.e.
  the upstream forward never ran them); without it every entry must be in `key_map`.
  `num_batches_tracked` is only a counter (docs/parity.md "Layout conventions") and is skipped."""
  params = pf.group("param")
  checked = set()
  for name, ref in pf.group("bn_after_train").items():
    if name.endswith("num_batches_tracked"):
      continue
    if name not in key_map:
      assert unmapped is not None and unmapped(name), f"{name}: not in the key map"
      np.testing.assert_array_equal(ref, params[name], err_msg=name)
      continue
    entry = key_map[name]
    assert entry.collection == "batch_stats", name
    np.testing.assert_allclose(
      leaf(updated_batch_stats, entry), ref, rtol=1e-4, atol=1e-5, err_msg=name
    )
    checked.add(name)
  if n_leaves is not None:
    assert len(checked) == n_leaves, (len(checked), n_leaves)
  return checked


def assert_train_step_matches(
  pf, model, key_map, variables, x, train_forward, all_bn=True, unmapped=None
):
  """One `train_forward(model, variables, x)` -> (outputs, {'batch_stats': ...}): outputs vs
  `train_out/` (`assert_forward_matches`) and running stats vs `bn_after_train/`
  (`assert_bn_stats_match`; with `all_bn`, every batch_stats leaf of `variables` is checked).
  Returns (updated batch_stats, names checked)."""
  import jax

  _, updated = assert_forward_matches(
    pf, "train_out", model, train_forward, variables, x, with_state=True
  )
  n_leaves = len(jax.tree.leaves(variables["batch_stats"])) if all_bn else None
  checked = assert_bn_stats_match(pf, key_map, updated["batch_stats"], n_leaves, unmapped)
  return updated["batch_stats"], checked


def lossw_loss(train_forward):
  """loss_fn(model, params, batch_stats, x, lossw) = sum_i sum(out_i * lossw_i) (docs/parity.md
  "Network fixtures"), where `train_forward(model, variables, x)` -> (outputs, updated state)."""
  import jax.numpy as jnp

  def loss_fn(model, params, batch_stats, x, lossw):
    outs, _ = train_forward(model, {"params": params, "batch_stats": batch_stats}, x)
    outs = as_tuple(outs)
    assert len(outs) == len(lossw), (len(outs), len(lossw))
    return sum(jnp.sum(o * w) for o, w in zip(outs, lossw))

  return loss_fn


def loss_and_grads(model, loss_fn, variables, x, lossw):
  """(loss, numpy grads w.r.t. params) of jitted `loss_fn(model, params, batch_stats, x, lossw)`."""
  import jax

  loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=1), static_argnums=0)(
    model, variables["params"], variables["batch_stats"], x, list(lossw)
  )
  return float(loss), jax.tree.map(np.asarray, grads)


def x64_loss_and_grads(model_name: str, kwargs: dict, loss_fn, variables, x, lossw):
  """`loss_and_grads` of the float64 model on the float32 params, input and loss weights upcast: the
  counterpart of torch's `model.double()` step that gave `loss64` and `grad64/`."""
  import jax
  import jax.numpy as jnp

  from jaxseg import models

  with jax.enable_x64(True):
    up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    model64 = models.get(model_name, **kwargs, dtype=jnp.float64)
    return loss_and_grads(model64, loss_fn, up(variables), up(x), up(list(lossw)))


# float32 gradients (docs/parity.md "Tolerances"). A weight's gradient entry sums n products over
# the batch and the voxels of its layer, and each product's cotangent has come through a train-mode
# BatchNorm backward, s / sigma * (dy - mean(dy) - xhat * mean(dy * xhat)), with two more sums of
# that length. Every backward path crosses the full-resolution layers, so n = batch x input voxels
# and the first-order float32 error is at most GRAD_SUMS_IN_SERIES worst-case summation bounds
# gamma_n = n u / (1 - n u), u = 2^-24, taken relative to max|grad64| of the tensor. The bound holds
# whatever order a backend sums in (batch norm's own sums are blocked, layers._blocked_sum, which
# keeps jaxseg's gradients near torch's, about 1e-5 of max|grad64|, under every XLA:CPU setting
# measured), and a float32-only fault (a bfloat16 forward, the loss scaled by 1.02) exceeds it. Where cancellation makes torch's
# own float32 gradient noisier than that (grad_fp32_noise_rel), GRAD_NOISE_FACTOR times its noise.
GRAD_SUMS_IN_SERIES = 3
GRAD_NOISE_FACTOR = 10.0
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def grad32_tolerance(pf) -> float:
  """GRAD_SUMS_IN_SERIES * gamma_n, n = batch x spatial size of the fixture's input [B, C, *S]."""
  shape = pf["input"].shape
  n = shape[0] * int(np.prod(shape[2:]))
  nu = n * FLOAT32_UNIT_ROUNDOFF
  assert nu < 1, f"{pf.path.name}: input {shape} is too large for a float32 summation bound"
  return GRAD_SUMS_IN_SERIES * nu / (1 - nu)


def assert_grads64_match(pf, key_map, grads64, rel_tol: float, grads32=None, unmapped=None):
  """Every `grad64/` entry within `rel_tol` of max|grad64 of that tensor| (docs/parity.md: a
  faithful float64 port reaches ~1e-11). Also: the `grad_structurally_zero_omitted` parameters
  (conv biases cancelled by a following mean subtraction) are zero to 1e-9 of the largest grad64;
  the `params_without_grad` ones are exactly zero (`unmapped(name)` accepts those the port does not
  build); with `grads32`, every float32 gradient that `grad/` holds is within `grad32_tolerance` of
  grad64, relative to max|grad64| of that tensor."""
  ref64, ref32, meta = pf.group("grad64"), pf.group("grad"), pf.meta
  tol32 = grad32_tolerance(pf) if grads32 is not None else None
  assert ref64, "fixture holds no grad64/ entries"
  scale = max(float(np.abs(g).max()) for g in ref64.values())
  for name, want in ref64.items():
    entry = key_map[name]
    want = entry.to_flax(want)
    denom = float(np.abs(want).max()) or scale
    err64 = float(np.abs(leaf(grads64, entry) - want).max()) / denom
    assert err64 < rel_tol, f"{name}: float64 grad rel err {err64:.2e}"
    if grads32 is not None and name in ref32:
      tol = max(tol32, GRAD_NOISE_FACTOR * meta["grad_fp32_noise_rel"].get(name, 0.0))
      err32 = float(np.abs(leaf(grads32, entry) - want).max()) / denom
      assert err32 <= tol, (
        f"{pf.path.name} {name}: float32 gradient {err32:.2e} of max|grad64| "
        f"from grad64, beyond float32 rounding ({tol:.2e})"
      )
  for name in meta.get("grad_structurally_zero_omitted", []):
    assert float(np.abs(leaf(grads64, key_map[name])).max()) < 1e-9 * scale, name
  for name in meta.get("params_without_grad", []):
    if name not in key_map:
      assert unmapped is not None and unmapped(name), f"{name}: not in the key map"
      continue
    assert not np.any(leaf(grads64, key_map[name])), name


def assert_key_map_covers(pf, model_name: str, kwargs: dict) -> dict:
  """The key map and expected shapes of `model_name` are exactly the fixture's state_dict (less the
  `num_batches_tracked` counters), which is returned."""
  from jaxseg.models import torch_import

  params = {k: v for k, v in pf.group("param").items() if not k.endswith("num_batches_tracked")}
  assert set(torch_import.key_map(model_name, **kwargs)) == set(params)
  shapes = torch_import.expected_torch_shapes(model_name, **kwargs)
  assert {k: tuple(v.shape) for k, v in params.items()} == shapes
  return params


def channel_dropout_masks(before, after, atol: float = 1e-8):
  """(kept, dropped) [B, C] masks of a channel-wise dropout at p=0.5 from its channels-last input
  and output: every (sample, channel) map is either scaled by 2 (rtol 1e-5) or zeroed."""
  before, after = np.asarray(before), np.asarray(after)
  spatial = tuple(range(1, before.ndim - 1))
  kept = np.all(np.isclose(after, 2 * before, rtol=1e-5, atol=atol), axis=spatial)
  dropped = np.all(after == 0, axis=spatial)
  assert np.all(kept | dropped)
  return kept, dropped
