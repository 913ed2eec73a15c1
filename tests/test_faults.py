"""Faults a run survives, each injected for real in a `python -m jaxseg.main` subprocess and compared
with an uninterrupted run of the same command: SIGKILL between steps and while an orbax checkpoint is
being written, a truncated latest checkpoint, SIGTERM, two runs on one workdir, a full disk while
checkpointing; plus bad data stopping a run before its first step, and bitwise determinism."""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import errors
from jaxseg import train
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# The smoke run: 4 steps, a checkpoint every 2, a metrics line every step (config_lib.smoke).
CONFIG = "configs/la_mt.py:smoke=1,labeled=4,seed=0"


def _command(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "jaxseg.main",
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    *overrides,
  ]


def _run(workdir, *overrides, fault=None):
  env = dict(os.environ, **(fault or {}))
  return subprocess.run(
    _command(workdir, *overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )


def _result(workdir) -> tuple[dict, list]:
  workdir = pathlib.Path(workdir)
  summary = json.loads((workdir / "eval" / "val" / "summary.json").read_text())
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return summary, records


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run: (workdir, summary, metrics records)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return (workdir, *_result(workdir))


def _assert_same_as(straight, workdir):
  """Same steps logged once each, same losses, same final metrics as the uninterrupted run."""
  _, want_summary, want_records = straight
  summary, records = _result(workdir)
  assert [r["step"] for r in records] == [r["step"] for r in want_records]
  np.testing.assert_allclose(
    [r["loss"] for r in records], [r["loss"] for r in want_records], rtol=1e-6
  )
  for k in ("dice", "jaccard", "hd95", "asd"):
    assert summary[k] == pytest.approx(want_summary[k], rel=1e-6, abs=1e-9), k


def test_same_command_twice_is_bitwise_identical(straight):
  workdir = straight[0]
  first = {
    name: (workdir / name).read_bytes()
    for name in ("metrics.jsonl", "eval/val/summary.json", "eval/val/cases.csv")
  }
  moved = workdir.with_name("first")
  workdir.rename(moved)
  try:
    again = _run(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, data in first.items():
      assert (workdir / name).read_bytes() == data, name
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
    moved.rename(workdir)


def test_sigkill_between_steps_resumes_to_the_same_result(straight, tmp_path):
  killed = _run(tmp_path, fault={train._FAULT_ENV: "3"})
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not (tmp_path / "eval").exists()
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
  _assert_same_as(straight, tmp_path)


def test_sigkill_while_a_checkpoint_is_written(straight, tmp_path):
  killed = _run(tmp_path, fault={train._FAULT_KILL_IN_SAVE_ENV: "4"})
  assert killed.returncode == -9, killed.stderr[-3000:]
  # The step-4 checkpoint was cut: orbax's commit marker never came.
  assert not (tmp_path / "checkpoints" / "4" / "commit_success.txt").exists()
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "at step 2" in resumed.stdout
  _assert_same_as(straight, tmp_path)


def test_truncated_latest_checkpoint_warns_and_resumes_from_the_one_before(straight, tmp_path):
  killed = _run(tmp_path, fault={train._FAULT_ENV: "4"})
  assert killed.returncode == -9, killed.stderr[-3000:]
  latest = tmp_path / "checkpoints" / "4"
  for f in (latest / "state").rglob("*"):
    if f.is_file():
      os.truncate(f, f.stat().st_size // 2)
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"warning: checkpoint {latest} cannot be restored" in resumed.stderr
  assert "at step 2" in resumed.stdout
  assert (tmp_path / train.CORRUPT_DIR / "4").is_dir()
  _assert_same_as(straight, tmp_path)


def test_sigterm_checkpoints_the_current_step_and_exits_0(straight, tmp_path):
  stopped = _run(tmp_path, fault={train._FAULT_TERM_ENV: "3"})
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  assert "SIGTERM: stopped after step 3" in stopped.stdout
  assert (tmp_path / "checkpoints" / "3" / "commit_success.txt").exists()  # not a periodic step
  assert not (tmp_path / "eval").exists()
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "at step 3" in resumed.stdout
  _assert_same_as(straight, tmp_path)


def test_second_run_on_a_workdir_refuses_and_the_first_is_unharmed(straight, tmp_path):
  first = subprocess.Popen(
    _command(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    for line in first.stdout:  # the lock is held from before the data is built
      if line.startswith("[jaxseg] training"):
        break
    second = _run(tmp_path)
    assert first.poll() is None, "the first run ended before the second started"
  finally:
    rest, err = first.communicate(timeout=900)
  assert second.returncode == 2
  assert second.stderr.strip().splitlines() == [
    f"jaxseg: error: {tmp_path}: another jaxseg run (pid {first.pid}) is using this workdir; "
    "wait for it to finish, or choose another --workdir"
  ]
  assert first.returncode == 0, err[-3000:]
  _assert_same_as(straight, tmp_path)


def _run_on_small_tmpfs(workdir, mnt: pathlib.Path, out: pathlib.Path):
  """The smoke run with `mnt` a 10 MB tmpfs, then what it left there: (process, names of the
  entries in `mnt`, whether `mnt/2` is committed). As root the tmpfs is mounted here; otherwise in
  a private user and mount namespace (`unshare -rm`, no root needed), where the run and the listing
  happen. None where neither can mount."""
  mount = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], capture_output=True, text=True
  )
  if mount.returncode == 0:
    try:
      proc = _run(workdir)
      return (
        proc,
        sorted(p.name for p in mnt.iterdir()),
        (mnt / "2" / "commit_success.txt").exists(),
      )
    finally:
      subprocess.run(["umount", str(mnt)], check=True)
  probe = subprocess.run(
    ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
    capture_output=True,
  )
  if probe.returncode != 0:
    return None
  script = (
    'mnt="$1"; out="$2"; shift 2; mount -t tmpfs -o size=10m tmpfs "$mnt" || exit 99; "$@"; rc=$?; '
    'ls -1 "$mnt" > "$out/listing"; [ -e "$mnt/2/commit_success.txt" ] && touch "$out/committed"; '
    'exit "$rc"'
  )
  proc = subprocess.run(
    ["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), str(out), *_command(workdir)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode != 99, proc.stderr
  names = sorted((out / "listing").read_text().split())
  return proc, names, (out / "committed").exists()


def test_full_disk_while_checkpointing_is_a_clear_error(tmp_path):
  """checkpoints/ on a tmpfs with room for one checkpoint of the smoke run (about 7 MB): the
  second fails with ENOSPC."""
  mnt = tmp_path / "small"
  mnt.mkdir()
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").symlink_to(mnt)
  result = _run_on_small_tmpfs(workdir, mnt, tmp_path)
  if result is None:
    pytest.skip(
      "cannot mount a tmpfs to fill: neither root nor unprivileged user namespaces (the handling "
      "itself is checked without a mount by the test after this one)"
    )
  full, names, committed = result
  assert full.returncode == 2, full.stderr[-3000:]
  # jaxseg's one line; orbax's background writer may print its own traceback around it.
  lines = full.stderr.strip().splitlines()
  assert any(
    l.startswith("jaxseg: error:")
    and "no space left" in l
    and "earlier checkpoints are intact" in l
    for l in lines
  ), lines
  assert names == ["2"]  # no partial checkpoint left
  assert committed


def test_a_failed_checkpoint_write_is_a_storage_error_and_leaves_no_partial_folder(tmp_path):
  """The handling the tmpfs test above checks end to end, where no tmpfs can be mounted (no root, no
  user namespaces): a real ENOSPC OSError, raised bare or wrapped as orbax / tensorstore wrap it,
  becomes a StorageError naming the folder, and the unfinished temporary checkpoint folder is
  removed while the finished checkpoint stays; anything else is not a storage failure."""
  import orbax.checkpoint as ocp

  folder = tmp_path / "checkpoints"
  manager = ocp.CheckpointManager(folder)
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  wrapped = RuntimeError("Error writing local file")
  wrapped.__cause__ = full
  for e in (full, wrapped):
    (folder / "2").mkdir(parents=True, exist_ok=True)
    (folder / "3.orbax-checkpoint-tmp-1234").mkdir()
    got = train._storage_failure(manager, e)
    assert isinstance(got, errors.StorageError) and got.errno == errno.ENOSPC
    assert str(folder) in str(got) and "no space left" in str(got)
    assert "earlier checkpoints are intact" in str(got)
    assert sorted(p.name for p in folder.iterdir()) == ["2"]
  assert train._storage_failure(manager, ValueError("a bad shape")) is None
  manager.close()


def _bad_case(path: pathlib.Path, kind: str) -> str:
  """Damages the h5 case at `path` as `kind`; returns the message the run must give."""
  import h5py

  if kind == "truncated":
    os.truncate(path, path.stat().st_size // 2)
    return "truncated or corrupt"
  if kind == "corrupt":
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    return "truncated or corrupt"
  with h5py.File(path, "r") as f:
    image, label = f["image"][()], f["label"][()]
  expected = {
    "nan": "non-finite intensities (1 NaN, 0 inf)",
    "inf": "non-finite intensities (0 NaN, 1 inf)",
    "label_out_of_range": "label values [3] outside [0, 2)",
    "empty_label": "the label is empty",
    "shape_mismatch": "!= label shape",
    "float_label": "label dtype float32 is not an integer",
    "string_image": "image dtype |S1 is not a real number type",
  }[kind]
  if kind == "nan":
    image[1, 2, 3] = np.nan
  elif kind == "inf":
    image[1, 2, 3] = np.inf
  elif kind == "label_out_of_range":
    label[0, 0, 0] = 3
  elif kind == "empty_label":
    label[...] = 0
  elif kind == "shape_mismatch":
    label = label[:, :, :-1]
  elif kind == "float_label":
    label = label.astype(np.float32)
  elif kind == "string_image":
    image = np.full(image.shape, b"x", dtype="S1")
  with h5py.File(path, "w") as f:
    f.create_dataset("image", data=image)
    f.create_dataset("label", data=label)
  return expected


@pytest.mark.parametrize(
  "kind",
  [
    "truncated",
    "corrupt",
    "nan",
    "inf",
    "label_out_of_range",
    "empty_label",
    "shape_mismatch",
    "float_label",
    "string_image",
  ],
)
def test_bad_case_stops_the_run_before_any_step(tmp_path, kind):
  from jaxseg.data import DataError
  from jaxseg.data import get_dataset
  from jaxseg.data import la

  config = tiny_config("mean_teacher")
  root = get_dataset(config.data.name).synthesize(tmp_path / "data", config.data.synthetic)
  config.data.root = str(root)
  # The first listed case is a labeled training case (its label is ground truth).
  case = la.case_path(root, (root / la.LIST_FILE).read_text().split()[0])
  expected = _bad_case(case, kind)
  with pytest.raises(DataError) as e:
    train.train_and_evaluate(config, tmp_path / "run")
  assert str(case) in str(e.value) and expected in str(e.value), str(e.value)
  assert isinstance(e.value, errors.UserError)
  assert not (tmp_path / "run").exists()  # nothing left behind, no step run
