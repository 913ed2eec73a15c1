"""Atomic writes: the umask's file mode, a failed write (a real ENOSPC) leaves the previous file and
no temporary, and the workdir lock / early-failure clean-up of `io_utils.RunDir`."""

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from jaxseg import errors
from jaxseg import io_utils


@pytest.fixture
def umask():
  """Sets the process umask for one test and restores it after."""
  old = os.umask(0o022)
  yield lambda m: os.umask(m)
  os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_take_the_umask_mode(tmp_path, umask, mask, mode):
  umask(mask)
  io_utils.write_json(tmp_path / "a.json", {"x": 1})
  io_utils.write_text(tmp_path / "b.txt", "b")
  io_utils.write_csv(tmp_path / "c.csv", [{"k": 1}], ["k"])
  for name in ("a.json", "b.txt", "c.csv"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


def _full_disk(monkeypatch):
  """The next atomic write goes to /dev/full, whose writes fail with a real ENOSPC from the kernel;
  the temporary file still exists on disk, so the clean-up is checked too."""
  real = tempfile.mkstemp

  def mkstemp(**kwargs):
    fd, path = real(**kwargs)
    os.close(fd)
    return os.open("/dev/full", os.O_WRONLY), path

  monkeypatch.setattr(io_utils.tempfile, "mkstemp", mkstemp)


def test_enospc_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  io_utils.write_json(path, {"dice": 0.5})
  before = path.read_bytes()
  _full_disk(monkeypatch)
  with pytest.raises(errors.StorageError, match="no space left") as e:
    io_utils.write_json(path, {"dice": 0.9, "pad": "x" * 100_000})
  assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_metric_writer_reports_enospc(tmp_path):
  from jaxseg import writers

  w = writers.MetricWriter(tmp_path, enable_tensorboard=False)
  w.write(1, {"loss": 1.0})
  w._file.close()
  w._file = open("/dev/full", "w")
  with pytest.raises(errors.StorageError, match="metrics.jsonl.*no space left"):
    w.write(2, {"loss": 0.5})
  assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
    1
  ]


def test_rundir_removes_a_folder_it_created_on_early_failure(tmp_path):
  workdir = tmp_path / "runs" / "x"
  with pytest.raises(RuntimeError):
    with io_utils.RunDir(workdir):
      io_utils.write_json(workdir / "config.json", {})
      raise RuntimeError("data missing")
  assert not (tmp_path / "runs").exists()


def test_rundir_removes_only_new_entries_of_an_existing_folder(tmp_path):
  (tmp_path / "mine.txt").write_text("keep")
  with pytest.raises(RuntimeError):
    with io_utils.RunDir(tmp_path):
      (tmp_path / "checkpoints").mkdir()
      io_utils.write_json(tmp_path / "config.json", {})
      raise RuntimeError("bad data")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_rundir_keeps_everything_once_started(tmp_path):
  with pytest.raises(RuntimeError):
    with io_utils.RunDir(tmp_path / "w") as run:
      run.started()
      (tmp_path / "w" / "metrics.jsonl").write_text("")
      raise RuntimeError("step 3 failed")
  assert (tmp_path / "w" / "metrics.jsonl").exists()


def test_rundir_lock_refuses_a_second_process_and_dies_with_the_first(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from jaxseg import io_utils\n"
      f"with io_utils.RunDir({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(600)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(errors.RunStateError, match=f"pid {holder.pid}.*another --workdir"):
      with io_utils.RunDir(tmp_path):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The kernel drops the lock of a killed process: the workdir is free again.
  with io_utils.RunDir(tmp_path):
    pass
