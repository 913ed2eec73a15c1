"""Tests for jaxseg.published: the seed's numbers as data, and every config's docstring target
against them."""

import ast
import pathlib
import re

import pytest

from jaxseg import config_lib
from jaxseg import published

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))
# A Target paragraph that names no number to reach for the config's own setting.
NO_TARGET = re.compile(r"Target: (none|no published number)|so it is no target")


def _target(path: pathlib.Path) -> str:
  """The config docstring's "Target" paragraph, on one line."""
  doc = ast.get_docstring(ast.parse(path.read_text()))
  start = doc.index("Target")
  end = doc.find("\n\n", start)
  return " ".join(doc[start : end if end > 0 else None].split())


def _config(path: pathlib.Path, arg: str | None = None):
  return config_lib.load_config_module(path).get_config(arg)


def _numbers(entry: published.Entry) -> list[str]:
  """How the docstrings write the entry's numbers: 2 decimals (PROMISE12's Dice as a fraction)."""
  out = [f"{entry.dice / 100:.3f}" if entry.dataset == "promise12" else f"{entry.dice:.2f}"]
  out += [f"{v:.2f}" for v in (entry.jaccard, entry.hd95, entry.asd) if v is not None]
  return out


def test_the_table_loads_and_is_well_formed():
  keys = [(e.method, e.dataset, e.labeled) for e in published.ENTRIES]
  assert len(keys) == len(set(keys)), "one entry per (method, dataset, labeled)"
  for e in published.ENTRIES:
    assert e.checkpoint in ("final", "best_on_test", "best_on_val", "challenge"), e
    assert e.units in ("voxels", "mm"), e
    assert 0 < e.dice < 100 and (e.jaccard is None or 0 < e.jaccard < e.dice), e
    if e.config is not None:
      assert (REPO / e.config).is_file(), e.config
  for name in published.TABLES:
    assert published.table(name), name
  assert [e.method for e in published.table("la16")][:3] == ["supervised", "mean_teacher", "uamt"]
  uamt = published.lookup("uamt", "la", 16)
  assert (uamt.dice, uamt.jaccard, uamt.hd95, uamt.asd) == (88.88, 80.21, 7.32, 2.26)
  assert published.lookup("uamt", "la", 3) is None
  assert published.band("uamt")[0] == 1.5 and published.band("supervised") is None
  with pytest.raises(KeyError, match="unknown table 'la3'"):
    published.table("la3")


@pytest.mark.parametrize("entry", [e for e in published.ENTRIES if e.config], ids=str)
def test_entry_matches_its_config(entry):
  """The config trains this row (method, dataset, labeled) and its Target paragraph states every
  number of the entry."""
  path = REPO / entry.config
  c = _config(path, f"labeled={entry.run_labeled or entry.labeled}")
  assert c.method == entry.method
  assert c.data.name == entry.dataset
  assert c.eval.split == "val"  # reproduce never evaluates on the test split
  target = _target(path)
  for number in _numbers(entry):
    assert number in target, f"{entry.config}: {number} not in its Target paragraph: {target}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_target_is_published(path):
  """A config that states a target for its default setting has that setting's entry, and the
  first number the paragraph states for it is the entry's Dice."""
  target = _target(path)
  if NO_TARGET.search(target):
    assert not [e for e in published.ENTRIES if e.config == f"configs/{path.name}"]
    return
  c = _config(path)
  labeled = c.data.labeled
  entries = [
    e
    for e in published.ENTRIES
    if e.config == f"configs/{path.name}" and (e.run_labeled or e.labeled) == labeled
  ]
  assert len(entries) == 1, f"{path.name}: no published entry for its default labeled={labeled}"
  dice = _numbers(entries[0])[0]
  decimals = re.findall(r"\d+\.\d+", target)
  assert decimals and decimals[0] == dice, f"{path.name}: first number {decimals[:1]} != {dice}"
