"""Every reference to docs/ in the code, configs, tests, launchers and third_party resolves: the
file exists, a `docs/methods/<m>.md §N` (or "section N", §Nx, §N.M for item M of section N's
numbered list) names a section of that page, and a `docs/design.md "<heading>"` names a heading.
Also: no file points at the spec documents outside the repository."""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(
  [
    p
    for d in ("jaxseg", "configs", "tests", "launch", "third_party")
    for p in (REPO / d).rglob("*")
    if p.is_file() and p.suffix in (".py", ".md") and p != pathlib.Path(__file__)
  ]
  + [REPO / "README.md"]
)
REF = re.compile(
  r"docs/([\w/]+\.md)(?:[ ,]*(?:§ ?|sections? )"
  r"([0-9][0-9a-z.]*(?:[-, ]+§?[0-9][0-9a-z.]*)*)| \"([^\"]+)\")?"
)
OUTSIDE = re.compile(
  r"DESIGN\.md|shared/spec|spec/methods|NETWORKS\.md|FUNCTIONS\.md"
  r"|(?<![/\w])(acmt|bcp|cml|dtc|dycon|mcf|mt|uamt|upc|vnet)\.md"
)


def sections(text: str) -> set[str]:
  """'3', '3b', '2.1' for headings '## 3.', '### 3b.', '### 2.1'; '7.9' for item 9 of the
  numbered list under section 7."""
  out, current = set(), None
  for line in text.splitlines():
    m = re.match(r"#{2,3} ([0-9]+)([a-z]?)(?:\.([0-9]+))?[.\s]", line)
    if m:
      current = m.group(1)
      out.update(
        x
        for x in (current, current + m.group(2), f"{current}.{m.group(3)}" if m.group(3) else "")
        if x
      )
      continue
    m = re.match(r"\s{0,3}([0-9]+)\. ", line)
    if m and current:
      out.add(f"{current}.{m.group(1)}")
  return out


def unresolved(path: pathlib.Path) -> list[str]:
  problems = []
  for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
    where = f"{path.relative_to(REPO)}:{i}"
    if OUTSIDE.search(line):
      problems.append(f"{where}: points outside the repository: {line.strip()}")
    for m in REF.finditer(line):
      doc = REPO / "docs" / m.group(1)
      if not doc.is_file():
        problems.append(f"{where}: docs/{m.group(1)} does not exist")
        continue
      text = doc.read_text()
      for s in re.split(r"[-, ]+§?", m.group(2) or ""):
        if s.rstrip(".") and s.rstrip(".") not in sections(text):
          problems.append(f"{where}: docs/{m.group(1)} has no §{s.rstrip('.')}")
      headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", text, re.M)}
      if m.group(3) and m.group(3).strip().lower() not in headings:
        problems.append(f"{where}: docs/{m.group(1)} has no heading {m.group(3)!r}")
  return problems


def test_sections_reads_headings_and_numbered_items():
  text = "## 2. Losses\n1. a\n2. b\n### 3b. Pre\n## 7. Quirks\n9. nine\n"
  assert sections(text) == {"2", "2.1", "2.2", "3", "3b", "7", "7.9"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_references_resolve(path):
  assert not unresolved(path), "\n".join(unresolved(path))
