"""Parity of `VNetMilletari` with mattmacy/vnet.pytorch `vnet.py` `VNet` (fixture VNet_Milletari.npz).

The fixture (docs/parity.md) holds `weights/*` and cases `<case>/input/...`, `<case>/output/...`
listed in meta['cases']: eval and train forwards (train ones with the recorded Dropout3d masks),
the ContBatchNorm running stats after each call, and a float64 gradient case. Every case is run;
which checks apply follows from what the case holds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import torch_import
from jaxseg.models import vnet_milletari
from tests.conftest import FLOOR_TOL
from tests.conftest import NOISE_FACTOR
from tests.conftest import REFERENCE_NOISE_CAP
from tests.conftest import leaf

FIXTURE = "VNet_Milletari.npz"
MASK = "input/dropout_mask/"
STATE = "output/state_after/"
GRAD = "output/grad/"


def _load(parity):
  pf = parity(FIXTURE)
  kwargs = {"n_filters": int(pf.meta["constructor_args"]["base"])}
  weights = pf.group("weights")
  return pf, kwargs, weights, torch_import.import_state_dict("vnet_milletari", weights, **kwargs)


def _forward(model, variables, case, train, params=None, dtype=jnp.float32):
  """(log_softmax rows [B*D*H*W, 2] as upstream returns them, logits, updated batch_stats)."""
  up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)
  x = up(np.moveaxis(case["input/x"], 1, -1))
  masks = up({k[len(MASK) :]: v for k, v in case.items() if k.startswith(MASK)})
  params = up(variables["params"] if params is None else params)
  logits, mutated = model.apply(
    {"params": params, "batch_stats": variables["batch_stats"]},
    x,
    train=train,
    dropout_masks=masks,
    mutable=["batch_stats"],
  )
  rows = jax.nn.log_softmax(logits, axis=-1).reshape(-1, logits.shape[-1])
  return rows, logits, mutated["batch_stats"]


def _assert_close(name, got, ref64, want):
  """The rule of tests/conftest.py `assert_forward_matches`: the float64 port's distance to
  upstream's float32 output is upstream's own rounding (capped at REFERENCE_NOISE_CAP of the
  scale); the float32 port may miss by NOISE_FACTOR times it, never less than FLOOR_TOL."""
  err, scale = float(np.abs(ref64 - want).max()), float(np.abs(want).max())
  assert err <= REFERENCE_NOISE_CAP * scale, f"{name}: float64 port {err:.3e} from upstream"
  np.testing.assert_allclose(
    got, want, rtol=FLOOR_TOL["rtol"], atol=max(FLOOR_TOL["atol"], NOISE_FACTOR * err), err_msg=name
  )


def _check_forward(pf, name, case, model, variables):
  train = "train" in pf.meta["cases"][name]["mode"]
  assert train == any(k.startswith(MASK) for k in case), (name, "masks iff train mode")
  forward = jax.jit(_forward, static_argnums=(0, 3, 5))
  rows, logits, stats = forward(model, variables, case, train)
  with jax.enable_x64(True):
    rows64, logits64, _ = forward(
      model.clone(dtype=jnp.float64), variables, case, train, None, jnp.float64
    )
    rows64, logits64 = np.asarray(rows64), np.asarray(logits64)
  _assert_close(f"{name} y", rows, rows64, case["output/y"])
  if "output/logits_ncdhw" in case:
    _assert_close(
      f"{name} logits", logits, logits64, np.moveaxis(case["output/logits_ncdhw"], 1, -1)
    )
  key_map = vnet_milletari.torch_key_map()
  after = {
    k[len(STATE) :]: v
    for k, v in case.items()
    if k.startswith(STATE) and not k.endswith("num_batches_tracked")
  }
  for bn_key, want in after.items():
    np.testing.assert_allclose(
      leaf(stats, key_map[bn_key]), want, rtol=1e-4, atol=1e-5, err_msg=f"{name} {bn_key}"
    )
  if after:
    # Every running stat of the model was updated, in eval mode too (ContBatchNorm3d).
    assert len(after) == len(jax.tree.leaves(variables["batch_stats"])), name


def _forward_cases(pf):
  return [n for n in pf.meta["cases"] if not any(k.startswith(GRAD) for k in pf.case(n))]


def test_key_map_covers_fixture_state_dict(parity):
  pf, kwargs, weights, _ = _load(parity)
  want = {k: v.shape for k, v in weights.items() if not k.endswith("num_batches_tracked")}
  assert torch_import.expected_torch_shapes("vnet_milletari", **kwargs) == want
  key_map = torch_import.key_map("vnet_milletari", **kwargs)
  n_params = sum(int(np.prod(s)) for k, s in want.items() if key_map[k].collection == "params")
  assert n_params == pf.meta["n_params"]


def test_importer_lists_bad_keys(parity):
  _, kwargs, weights, _ = _load(parity)
  bad = dict(weights)
  del bad["out_tr.conv2.bias"]
  bad["in_tr.relu1.weight"] = np.zeros(7, np.float32)
  bad["extra.weight"] = np.zeros(1, np.float32)
  with pytest.raises(ValueError) as err:
    torch_import.import_state_dict("vnet_milletari", bad, **kwargs)
  for expected in ("out_tr.conv2.bias", "in_tr.relu1.weight: got (7,)", "extra.weight"):
    assert expected in str(err.value)


def test_literal_batch_repeat_every_forward_case(parity):
  """The 2017 code (literal_batch_repeat) against every forward case: outputs, logits, BN stats."""
  pf, kwargs, _, variables = _load(parity)
  model = models.get("vnet_milletari", literal_batch_repeat=True, **kwargs)
  names = _forward_cases(pf)
  assert names
  for name in names:
    _check_forward(pf, name, pf.case(name), model, variables)


def test_channel_repeat_matches_batch1_cases_and_differs_for_larger_batches(parity):
  """The paper's channel repeat (default) equals the literal code exactly where the batch is 1;
  for larger batches the literal code mixes samples, so the default must not reproduce it."""
  pf, kwargs, _, variables = _load(parity)
  model = models.get("vnet_milletari", **kwargs)
  batch1 = [n for n in _forward_cases(pf) if pf.meta["cases"][n]["input_shape"][0] == 1]
  larger = [n for n in _forward_cases(pf) if pf.meta["cases"][n]["input_shape"][0] > 1]
  assert batch1 and larger
  for name in batch1:
    _check_forward(pf, name, pf.case(name), model, variables)
  name = larger[0]
  case = pf.case(name)
  rows, _, _ = jax.jit(_forward, static_argnums=(0, 3, 5))(
    model, variables, case, "train" in pf.meta["cases"][name]["mode"]
  )
  assert float(np.abs(rows - case["output/y"]).max()) > 1e-2


def test_repeat_input_formula():
  """literal: channel c of sample b gets x[(C*b + c) mod B]; default: x[b] on every channel."""
  b, c = 3, 4
  x = jnp.arange(b, dtype=jnp.float32).reshape(b, 1, 1, 1, 1) * jnp.ones((1, 2, 2, 2, 1))
  literal = vnet_milletari.VNetMilletari(n_filters=c, literal_batch_repeat=True)._repeat_input(x, c)
  default = vnet_milletari.VNetMilletari(n_filters=c)._repeat_input(x, c)
  want = (np.arange(b)[:, None] * c + np.arange(c)[None, :]) % b
  np.testing.assert_array_equal(literal[:, 0, 0, 0, :], want)
  np.testing.assert_array_equal(default[:, 0, 0, 0, :], np.repeat(np.arange(b)[:, None], c, 1))


def test_gradient_cases_float64_and_float32(parity):
  """Each case holding gradients: the float64 port reproduces torch's float64 loss and every
  parameter gradient to 1e-9 relative; the float32 port is within torch's own float32 noise."""
  pf, kwargs, _, variables = _load(parity)
  key_map = vnet_milletari.torch_key_map(**kwargs)
  names = [n for n in pf.meta["cases"] if n not in _forward_cases(pf)]
  assert names
  for name in names:
    case = pf.case(name)
    train = "train" in pf.meta["cases"][name]["mode"]
    grads = {k[len(GRAD) :]: v for k, v in case.items() if k.startswith(GRAD)}
    assert set(grads) == {k for k, e in key_map.items() if e.collection == "params"}, name

    def loss_and_grads(dtype):
      model = models.get("vnet_milletari", literal_batch_repeat=True, dtype=dtype, **kwargs)

      def loss(params):
        rows, _, _ = _forward(model, variables, case, train, params, dtype)
        return jnp.sum(rows * jnp.asarray(case["input/w"], dtype)), rows

      (value, rows), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        jax.tree.map(lambda a: jnp.asarray(a, dtype), variables["params"])
      )
      return float(value), np.asarray(rows), jax.tree.map(np.asarray, g)

    with jax.enable_x64(True):
      loss64, rows64, g64 = loss_and_grads(jnp.float64)
    loss32, _, g32 = loss_and_grads(jnp.float32)
    want_loss = float(case["output/loss"])
    assert abs(loss64 - want_loss) <= 1e-10 * abs(want_loss), (loss64, want_loss)
    assert abs(loss32 - want_loss) <= 1e-5 * abs(want_loss), (loss32, want_loss)
    np.testing.assert_allclose(rows64, case["output/y"], rtol=1e-9, atol=1e-10, err_msg=name)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    tol32 = max(10 * pf.meta["grad_fp32_noise_rel_max"], 1e-4)
    for key, want in grads.items():
      entry = key_map[key]
      want = entry.to_flax(want)
      got64, got32 = leaf(g64, entry), leaf(g32, entry)
      if float(np.abs(want).max()) < 1e-9 * scale:
        # A conv bias feeding a batch-statistics BN: its exact gradient is 0 (the stored values
        # are float64 noise), so both ports must be 0 up to rounding of the model's largest one.
        err64, err32 = (float(np.abs(g).max()) / scale for g in (got64, got32))
      else:
        denom = float(np.abs(want).max())
        err64 = float(np.abs(got64 - want).max()) / denom
        err32 = float(np.abs(got32 - want).max()) / denom
      assert err64 < 1e-9, f"{name} {key}: float64 grad rel err {err64:.2e}"
      assert err32 < tol32, f"{name} {key}: float32 grad rel err {err32:.2e}"
