"""jaxseg/predict.py: label maps of new scans in the scan's geometry, equal to what evaluation gives
on the prepared volume; the per-dataset scan preparation equals jaxseg.prepare's; weights from a
run's checkpoint or a torch state_dict; clear errors."""

import json

import jax
import nibabel as nib
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseg import evaluation
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import predict
from jaxseg.data import h5folder
from jaxseg.data import synthetic
from jaxseg.methods import base
from tests.conftest import require_import
from tests.conftest import tiny_config

SCAN_SHAPE = (28, 20, 18)


def _affine() -> np.ndarray:
  """Rotated about two axes, mirrored, anisotropic (0.8 / 1.25 / 2.5 mm), offset."""
  a, b = 0.3, -0.7
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  affine = np.eye(4)
  affine[:3, :3] = rz @ rx @ np.diag([-0.8, 1.25, 2.5])
  affine[:3, 3] = [-40.5, 12.25, 7.0]
  return affine


def _raw_scan(index: int = 5) -> np.ndarray:
  """A phantom at scanner-like intensities (not z-scored): the preparation must normalise it."""
  image, _ = synthetic.make_case(0, index, SCAN_SHAPE)
  return (image * 37.0 + 400.0).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir as train.py leaves it (config.json, an orbax checkpoint of the state), with the
  output bias moved so that the untrained network marks part of a scan as foreground."""
  tmp = tmp_path_factory.mktemp("predict")
  config = tiny_config("mean_teacher")
  method = methods.build(config)
  state = method.init(
    jax.random.PRNGKey(config.seed), base.example_batch(config, method.host_targets)
  )
  prob_fn = jax.jit(method.predict)
  _, score = _sliding(lambda w: prob_fn(state, w), h5folder.normalize(_raw_scan()), config)
  p1 = np.clip(np.median(score[..., 1]), 1e-6, 1 - 1e-6)
  bias = np.asarray(state.params["out_conv"]["bias"])
  bias = bias + np.array([0.0, np.log((1 - p1) / p1)], bias.dtype)
  state = state.replace(
    params={
      **state.params,
      "out_conv": {**state.params["out_conv"], "bias": jax.numpy.asarray(bias)},
    }
  )
  workdir = tmp / "run"
  io_utils.write_json(workdir / "config.json", config.to_dict())
  manager = ocp.CheckpointManager(
    workdir / "checkpoints", options=ocp.CheckpointManagerOptions(create=True)
  )
  manager.save(config.total_steps, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
  return {
    "tmp": tmp,
    "workdir": workdir,
    "config": config,
    "method": method,
    "state": state,
    "prob_fn": lambda w: prob_fn(state, w),
  }


def _sliding(prob_fn, image, config):
  from jaxseg import inference

  return inference.sliding_window_parity(
    prob_fn,
    image,
    tuple(config.data.patch_size),
    config.eval.stride_xy,
    config.eval.stride_z,
    config.data.num_classes,
    batch_size=config.eval.batch_size,
  )


def _expected(run, raw: np.ndarray) -> np.ndarray:
  """What evaluation gives on the prepared volume (the LA-layout phantoms' z-score)."""
  return evaluation.predict_case(run["prob_fn"], h5folder.normalize(raw), run["config"])


def test_nifti_round_trip_keeps_affine_and_shape(run, capsys):
  affine = _affine()
  raw = _raw_scan()
  scans = run["tmp"] / "scans"
  scans.mkdir()
  nib.save(nib.Nifti1Image(raw, affine), str(scans / "patient_a.nii.gz"))
  nib.save(nib.Nifti1Image(_raw_scan(6)[..., None], affine), str(scans / "patient_b.nii"))
  (scans / "notes.txt").write_text("not a scan")
  out = run["tmp"] / "out"
  assert (
    predict.main(["--workdir", str(run["workdir"]), "--input", str(scans), "--output", str(out)])
    == 0
  )
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[jaxseg.predict] ")]
  assert "1/2 patient_a.nii.gz" in lines[1] and "2/2 patient_b.nii" in lines[2]
  assert sorted(p.name for p in out.iterdir()) == ["patient_a_seg.nii.gz", "patient_b_seg.nii.gz"]

  seg = nib.load(str(out / "patient_a_seg.nii.gz"))
  np.testing.assert_allclose(seg.affine, affine, rtol=0, atol=1e-5)
  np.testing.assert_allclose(seg.header.get_zooms(), (0.8, 1.25, 2.5), rtol=1e-6)
  assert seg.shape == SCAN_SHAPE and seg.get_data_dtype() == np.uint8
  got = np.asarray(seg.dataobj)
  want = _expected(run, np.asarray(nib.load(str(scans / "patient_a.nii.gz")).get_fdata()))
  np.testing.assert_array_equal(got, want)
  assert 0.01 < got.mean() < 0.99  # both classes: a transposed or flipped map would not match
  # A 4-D file with one volume gives a 3-D label map of its first three axes.
  seg_b = nib.load(str(out / "patient_b_seg.nii.gz"))
  assert seg_b.shape == SCAN_SHAPE
  np.testing.assert_allclose(seg_b.affine, affine, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(seg_b.dataobj), _expected(run, _raw_scan(6)))


def test_metaimage_round_trip_keeps_geometry(run):
  sitk = require_import("SimpleITK")
  raw = _raw_scan(7)
  img = sitk.GetImageFromArray(np.transpose(raw))  # SimpleITK arrays are (k, j, i)
  img.SetSpacing((0.7, 1.1, 3.0))
  img.SetOrigin((12.0, -30.5, 4.25))
  img.SetDirection(
    tuple(np.linalg.qr(np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.0, 0.4, 1.0]]))[0].ravel())
  )
  path = run["tmp"] / "scan_c.mha"
  sitk.WriteImage(img, str(path))
  predictor = predict.build_predictor(workdir=str(run["workdir"]))
  [written] = predict.predict_scans(predictor, path, run["tmp"] / "out_mha", stream=None)
  assert written.name == "scan_c_seg.nii.gz"
  seg = sitk.ReadImage(str(written))
  assert seg.GetSize() == img.GetSize()
  np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), rtol=1e-5)
  np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
  np.testing.assert_allclose(seg.GetDirection(), img.GetDirection(), atol=1e-5)
  np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(seg)), _expected(run, raw))


def test_torch_state_dict_gives_the_same_label_map(run):
  """The run's weights written as an upstream VNet state_dict (.pth) predict the same map through
  torch_import as through the checkpoint."""
  torch = require_import("torch")
  from jaxseg.models import torch_import

  config, state = run["config"], run["state"]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  state_dict = {}
  for name, entry in torch_import.key_map(config.model.name, **config.model.kwargs).items():
    leaf = variables[entry.collection]
    for key in entry.path:
      leaf = leaf[key]
    leaf = np.asarray(leaf)
    state_dict[name] = torch.from_numpy(
      np.array(leaf if entry.perm is None else np.transpose(leaf, np.argsort(entry.perm)))
    )
  pth = run["tmp"] / "vnet.pth"
  torch.save({"state_dict": state_dict}, pth)
  scan = run["tmp"] / "scan_d.nii.gz"
  raw = _raw_scan(8)
  nib.save(nib.Nifti1Image(raw, _affine()), str(scan))
  config_path = run["tmp"] / "config.py"
  config_path.write_text(
    "import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
    f"  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n"
  )
  out = run["tmp"] / "out_torch"
  assert (
    predict.main(
      [
        "--config",
        str(config_path),
        "--model",
        config.model.name,
        "--model_kwargs",
        json.dumps({"n_filters": config.model.kwargs.n_filters}),
        "--torch_checkpoint",
        str(pth),
        "--input",
        str(scan),
        "--output",
        str(out),
      ]
    )
    == 0
  )
  got = np.asarray(nib.load(str(out / "scan_d_seg.nii.gz")).dataobj)
  np.testing.assert_array_equal(got, _expected(run, raw))
  # Weights of another width do not fit the method's network: the file is named.
  with pytest.raises(predict.PredictError, match="vnet.pth: cannot import as model 'vnet'"):
    predict.build_predictor(
      config_file=str(config_path), torch_checkpoint=str(pth), model_kwargs={"n_filters": 8}
    )


def test_errors_name_the_file(run, tmp_path, capsys):
  scan = tmp_path / "ok.nii.gz"
  nib.save(nib.Nifti1Image(_raw_scan(), _affine()), str(scan))
  workdir = str(run["workdir"])
  cases = [
    (["--workdir", str(tmp_path / "nope")], "nope: --workdir does not exist"),
    (["--workdir", str(tmp_path)], "config.json: not found"),
    (["--config", str(tmp_path / "c.py"), "--torch_checkpoint", "x.pth"], "c.py: --config file"),
    (["--workdir", workdir, "--config", "c.py"], "exactly one of --workdir"),
    (["--workdir", workdir, "--model", "vnet"], "--model / --model_kwargs name the network"),
    (
      ["--workdir", workdir, "--torch_checkpoint", str(tmp_path / "w.pth")],
      "w.pth: --torch_checkpoint not found",
    ),
    (
      ["--workdir", workdir, "--input", str(tmp_path / "missing.nii.gz")],
      "missing.nii.gz: --input is neither a scan file nor a folder",
    ),
  ]
  for args, message in cases:
    argv = (
      args
      + (["--input", str(scan)] if "--input" not in args else [])
      + ["--output", str(tmp_path / "out")]
    )
    assert predict.main(argv) == 2, args
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, (args, err)
  # A run that has not saved a checkpoint.
  bare = tmp_path / "bare"
  io_utils.write_json(bare / "config.json", run["config"].to_dict())
  with pytest.raises(predict.PredictError, match="checkpoints: no checkpoint folder"):
    predict.build_predictor(workdir=str(bare))
  # Scans: unreadable, unsupported, 2-D, NaN, duplicate names, empty folder.
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "broken.nii.gz").write_bytes(b"not a nifti")
  with pytest.raises(predict.PredictError, match="broken.nii.gz: cannot read as NIfTI"):
    predict.read_scan(bad / "broken.nii.gz")
  (bad / "scan.png").write_bytes(b"")
  with pytest.raises(predict.PredictError, match="scan.png: not a supported scan format"):
    predict.list_scans(bad / "scan.png")
  nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), str(bad / "flat.nii"))
  with pytest.raises(predict.PredictError, match="flat.nii: expected a 3-D scan"):
    predict.read_scan(bad / "flat.nii")
  nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(bad / "n.nii"))
  with pytest.raises(predict.PredictError, match="n.nii: the scan holds non-finite"):
    predict.read_scan(bad / "n.nii")
  nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(bad / "n.nii.gz"))
  with pytest.raises(predict.PredictError, match="several scans named \\['n'\\]"):
    predict.list_scans(bad)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(predict.PredictError, match="empty: no scan files"):
    predict.list_scans(empty)
  with pytest.raises(predict.PredictError, match="data.name='pancreas_x': jaxseg.predict has no"):
    predict.preparation("pancreas_x")


# --- The scan preparation is the dataset's preparation (jaxseg/prepare/<dataset>.py) run on the
# same raw file, without the label-driven crop; `restore` puts a label map back on the scan grid.


def _brain(rng, shape=(30, 26, 22)):
  """A FLAIR-like volume: zero background, positive integer intensities in an off-centre box."""
  flair = np.zeros(shape, np.int16)
  flair[3:25, 5:23, 2:19] = rng.integers(20, 900, size=(22, 18, 17))
  seg = np.zeros(shape, np.uint8)
  seg[8:14, 9:15, 6:12] = rng.choice([1, 2, 4], size=(6, 6, 6))
  return flair, seg


def test_brats_preparation_matches_prepare(tmp_path):
  from jaxseg.prepare import brats as prepare_brats
  from jaxseg.prepare import common

  flair, seg = _brain(np.random.default_rng(0))
  files = {"flair": tmp_path / "c_flair.nii.gz", "seg": tmp_path / "c_seg.nii.gz"}
  nib.save(nib.Nifti1Image(flair, _affine()), str(files["flair"]))
  nib.save(nib.Nifti1Image(seg, _affine()), str(files["seg"]))
  [out] = prepare_brats.process(common.RawCase("c", files), {}).outputs
  scan = predict.read_scan(files["flair"])
  prepared = predict.preparation("brats")(scan.array, scan.spacing)
  # The network sees the prepared h5 volume in the source's orientation (SagittalToAxial).
  assert prepared.image.shape == out.arrays["image"].shape[::-1]
  np.testing.assert_allclose(
    np.transpose(prepared.image), out.arrays["image"], rtol=1e-5, atol=1e-5
  )
  restored = prepared.restore(np.transpose(out.arrays["label"]))
  assert restored.shape == flair.shape
  np.testing.assert_array_equal(restored[3:24, 5:22, 2:18], out.arrays["label"])
  # The box ends before the last brain voxel of each axis, as upstream's slicing: 0 there.
  assert restored.sum() == out.arrays["label"].sum() and not restored[24].any()
  untransposed = predict.preparation("brats_upstream_test")(scan.array, scan.spacing)
  np.testing.assert_array_equal(untransposed.image, np.transpose(prepared.image))


def test_acdc_isles_la_preparations_match_prepare(tmp_path):
  import nrrd

  from jaxseg.prepare import acdc as prepare_acdc
  from jaxseg.prepare import common
  from jaxseg.prepare import isles as prepare_isles
  from jaxseg.prepare import la as prepare_la

  rng = np.random.default_rng(1)
  image = (rng.random((24, 20, 6)) * 300).astype(np.float32)
  label = (rng.random((24, 20, 6)) > 0.8).astype(np.uint8)
  files = {"image": tmp_path / "f.nii.gz", "label": tmp_path / "f_gt.nii.gz"}
  nib.save(nib.Nifti1Image(image, _affine()), str(files["image"]))
  nib.save(nib.Nifti1Image(label, _affine()), str(files["label"]))
  scan = predict.read_scan(files["image"])

  out = prepare_acdc.process(common.RawCase("f", files), {}).outputs[0].arrays
  prepared = predict.preparation("acdc")(scan.array, scan.spacing)
  np.testing.assert_allclose(prepared.image, out["image"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(prepared.restore(out["label"]), label)

  isles_files = {"dwi": files["image"], "adc": files["image"], "msk": files["label"]}
  out = prepare_isles.process(common.RawCase("s", isles_files), {}).outputs[0].arrays
  prepared = predict.preparation("isles")(scan.array, scan.spacing)
  np.testing.assert_array_equal(prepared.image, out["image"])
  np.testing.assert_array_equal(prepared.restore(out["label"]), label)

  # LA: NRRD in, read by SimpleITK here and by pynrrd in the preparation (same (x, y, z) order).
  require_import("SimpleITK")
  raw = (rng.random((40, 36, 8)) * 500).astype(np.float32)
  endo = np.zeros(raw.shape, np.uint8)
  endo[15:22, 12:20, 2:6] = 255
  la_files = {"image": tmp_path / "lgemri.nrrd", "label": tmp_path / "laendo.nrrd"}
  nrrd.write(str(la_files["image"]), raw, {"spacings": [0.625, 0.625, 0.625]})
  nrrd.write(str(la_files["label"]), endo, {"spacings": [0.625, 0.625, 0.625]})
  processed = prepare_la.process(common.RawCase("c1", la_files), {"seed": 0})
  crop = tuple(slice(a, b) for a, b in processed.info["crop"])
  scan = predict.read_scan(la_files["image"])
  np.testing.assert_array_equal(scan.array, raw)
  prepared = predict.preparation("la")(scan.array, scan.spacing)
  np.testing.assert_allclose(
    prepared.image[crop], processed.outputs[0].arrays["image"], rtol=1e-5, atol=1e-5
  )


def test_pancreas_preparation_resamples_and_restores():
  rng = np.random.default_rng(2)
  hu = rng.uniform(-300, 400, size=(20, 18, 6)).astype(np.float32)
  prepared = predict.preparation("pancreas")(hu, (0.7, 0.8, 2.5))
  assert prepared.image.shape == (14, 14, 15)  # int(size * spacing) per axis, 1 mm voxels
  assert abs(prepared.image.mean()) < 1e-5 and abs(prepared.image.std() - 1) < 1e-4
  # Restoring a map of 1 mm voxel indices gives each scan voxel its nearest 1 mm voxel.
  grid = np.indices(prepared.image.shape)
  codes = grid[0] * 10000 + grid[1] * 100 + grid[2]
  restored = predict.preparation("pancreas")(hu, (0.7, 0.8, 2.5)).restore(codes % 251)
  assert restored.shape == hu.shape
  i, j, k = 7, 5, 3
  assert restored[i, j, k] == (round(i * 0.7) * 10000 + round(j * 0.8) * 100 + round(k * 2.5)) % 251


def test_promise12_preparation_matches_prepare(tmp_path):
  sitk = require_import("SimpleITK")
  from jaxseg.prepare import common
  from jaxseg.prepare import promise12 as prepare_promise12

  rng = np.random.default_rng(3)
  image = rng.uniform(50, 800, size=(40, 36, 12)).astype(np.float32)
  label = np.zeros(image.shape, np.uint8)
  label[12:30, 10:26, 3:9] = 1
  files = {"image": tmp_path / "Case00.mhd", "label": tmp_path / "Case00_segmentation.mhd"}
  for role, array in (("image", image), ("label", label)):
    img = sitk.GetImageFromArray(np.transpose(array))
    img.SetSpacing((0.625, 0.625, 3.6))
    img.SetOrigin((-20.0, 13.5, 40.0))
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(img, str(files[role]))
  [out] = prepare_promise12.process(common.RawCase("Case00", files), {}).outputs
  scan = predict.read_scan(files["image"])
  prepared = predict.preparation("promise12")(scan.array, scan.spacing)
  np.testing.assert_allclose(prepared.image, out.arrays["image"], rtol=1e-5, atol=1e-5)
  # The prepared label, put back on the scan grid, is the scan's label up to the 1.5 mm resampling.
  restored = prepared.restore(out.arrays["label"])
  assert restored.shape == label.shape and restored.dtype == np.uint8
  dice = 2 * np.sum(restored & label) / (restored.sum() + label.sum())
  assert dice > 0.9, dice
  assert not restored[:, :, :2].any() and not restored[:8].any()
