"""The published numbers of the seed's tables, as data: what `jaxseg.reproduce` compares against.

Each `Entry` is one row of a paper's (or README's) table: method, dataset, labeled setting, Dice
and Jaccard in %, 95HD and ASD (None where the source gives no value), the source, and how it was
evaluated (which checkpoint, which split, which distance unit). The config of the row (configs/*.py)
states the same numbers in its docstring's "Target" paragraph; tests/test_published.py checks that
they agree. Numbers marked `verified=False` were recalled in docs/methods/<method>.md, not checked
against the paper's PDF.

`TABLES` groups the rows `python -m jaxseg.reproduce --table NAME` runs: `(dataset, labeled)`.
`BANDS` holds the run-to-run Dice spreads the method docs report (docs/methods/<method>.md §7); a
row without one is compared against the reproduced seeds' own standard deviation.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Entry:
  """One published result.

  Attributes:
    method: the jaxseg method name (config.method), or the row's name where jaxseg has no config.
    dataset: 'la', 'acdc', 'pancreas', 'promise12' or 'isles'.
    labeled: labeled training cases (ACDC: patients).
    dice, jaccard: in %.
    hd95, asd: in `units` (None where the source has no value).
    config: the config file whose default (with `labeled`) trains this row, or None.
    source: where the number comes from.
    checkpoint: 'final' (the last step), 'best_on_test' (selected on the test list upstream),
      'best_on_val' (selected on a validation list) or 'challenge' (scored by a server).
    split: the split the number is measured on.
    units: 'voxels' or 'mm' (the distances).
    verified: False where the number was recalled, not checked against the source.
    dice_std: the across-case standard deviation the source reports (in %), or None.
    run_labeled: the `labeled` argument of `config` where it differs from `labeled` (PROMISE12's
      config holds 5 of the paper's 50 training cases out for validation).
  """

  method: str
  dataset: str
  labeled: int
  dice: float
  jaccard: float | None
  hd95: float | None
  asd: float | None
  config: str | None
  source: str
  checkpoint: str
  split: str
  units: str = "voxels"
  verified: bool = True
  dice_std: float | None = None
  run_labeled: int | None = None


# The row every table's "vs supervised" column is measured against.
BASELINE_METHOD = "supervised"

_LA_TEST = "LA test.list (20 cases)"
_DTC = "HiLab-git/DTC README (the UA-MT / DTC / MC-Net tables)"

ENTRIES: tuple[Entry, ...] = (
  # LA, 16 labeled (20%) of the 80 training cases.
  Entry("supervised", "la", 16, 85.06, None, None, None, "configs/la_vnet.py",
        "seed table (V-Net, 20% labeled)", "final", _LA_TEST),
  Entry("mean_teacher", "la", 16, 85.89, None, None, None, "configs/la_mt.py",
        "seed table (MT; no upstream repository publishes it)", "final", _LA_TEST),
  Entry("uamt", "la", 16, 88.88, 80.21, 7.32, 2.26, "configs/la_uamt.py",
        "Yu et al., MICCAI 2019; " + _DTC, "final", _LA_TEST),
  Entry("dtc", "la", 16, 89.42, 80.98, 7.32, 2.10, "configs/la_dtc.py", _DTC, "final", _LA_TEST),
  Entry("upc", "la", 16, 89.65, 81.36, 6.71, 2.15, "configs/la_upc.py",
        "seed table (UPC)", "final", _LA_TEST),
  Entry("mcf", "la", 16, 88.71, None, None, None, "configs/la_mcf.py",
        "seed table (MCF, CVPR 2023: 5-fold cross-validation mean)", "final", _LA_TEST),
  Entry("bcp", "la", 16, 90.34, 82.50, 6.75, 1.77, "configs/la_bcp.py",
        "Bai et al., CVPR 2023 (recalled, docs/methods/bcp.md §6)", "best_on_test", _LA_TEST,
        verified=False),
  Entry("acmt", "la", 16, 89.12, None, None, None, "configs/la_acmt.py",
        "seed table (AC-MT)", "best_on_test", _LA_TEST),
  Entry("cml", "la", 16, 90.36, None, None, None, "configs/la_cml.py",
        "seed table (CML)", "best_on_test", _LA_TEST),
  # LA, 8 labeled (10%).
  Entry("supervised", "la", 8, 79.99, 68.12, 21.11, 5.48, "configs/la_vnet.py",
        "DTC / MC-Net tables (V-Net rows)", "final", _LA_TEST, verified=False),
  Entry("uamt", "la", 8, 84.25, 73.48, 13.84, 3.36, "configs/la_uamt.py", _DTC, "final",
        _LA_TEST),
  Entry("dtc", "la", 8, 87.51, 78.17, 8.23, 2.36, "configs/la_dtc.py",
        "HiLab-git/DTC README (MC-Net's re-run)", "final", _LA_TEST),
  Entry("bcp", "la", 8, 89.62, 81.31, 6.81, 1.76, "configs/la_bcp.py",
        "Bai et al., CVPR 2023 (recalled, docs/methods/bcp.md §6)", "best_on_test", _LA_TEST,
        verified=False),
  # LA, 4 labeled (5%): UPC's second row.
  Entry("upc", "la", 4, 84.37, None, None, None, "configs/la_upc.py",
        "seed table (UPC, 5% labeled)", "final",
        _LA_TEST),
  # ACDC, 3 labeled patients (5%) and 7 (10%).
  Entry("bcp", "acdc", 3, 87.59, 78.67, 1.90, 0.67, "configs/acdc_bcp.py",
        "Bai et al., CVPR 2023 (recalled, docs/methods/bcp.md §6)", "best_on_val",
        "ACDC test.list (40 volumes)", verified=False),
  Entry("bcp", "acdc", 7, 88.84, 80.62, 3.98, 1.17, "configs/acdc_bcp.py",
        "Bai et al., CVPR 2023 (recalled, docs/methods/bcp.md §6)", "best_on_val",
        "ACDC test.list (40 volumes)", verified=False),
  # Pancreas-CT, 12 labeled of 62 (20%).
  Entry("dtc", "pancreas", 12, 78.27, 64.75, 8.36, 2.25, "configs/pancreas_dtc.py",
        "Luo et al., AAAI 2021 (recalled)", "final", "Pancreas-CT test list (20 volumes)",
        verified=False),
  Entry("uamt", "pancreas", 12, 77.26, 63.82, 11.90, 3.06, None,
        "Luo et al., AAAI 2021, UA-MT row (recalled)", "final",
        "Pancreas-CT test list (20 volumes)", verified=False),
  # PROMISE12: the original V-Net, all 50 training cases.
  Entry("supervised", "promise12", 50, 86.9, None, 5.71, None, "configs/promise12_vnet.py",
        "Milletari et al., 3DV 2016, Table 1 (V-Net; Hausdorff, not 95HD)", "challenge",
        "PROMISE12 challenge test set (30 cases)", units="mm", dice_std=3.3, run_labeled=45),
  # ISLES-2022, 5% labeled (10 of 200).
  Entry("dycon", "isles", 10, 61.48, None, 17.61, None, "configs/isles_dycon.py",
        "Assefa et al., CVPR 2025 (seed table)", "best_on_val", "ISLES-2022 test split"),
)  # fmt: skip

TABLES: dict[str, tuple[str, int]] = {
  "la16": ("la", 16),
  "la8": ("la", 8),
  "acdc5": ("acdc", 3),
  "pancreas": ("pancreas", 12),
  "promise12": ("promise12", 50),
  "isles": ("isles", 10),
}

# Run-to-run Dice spreads (±, in Dice points) the method docs report, and where.
BANDS: dict[str, tuple[float, str]] = {
  "uamt": (1.5, "docs/methods/uamt.md §7.9 (UA-MT issues #2, #12)"),
  "dtc": (0.8, "configs/la_dtc.py (the DTC maintainer, across seeds / GPUs)"),
}


def table(name: str) -> list[Entry]:
  """The rows of table `name` (one of `TABLES`), in `ENTRIES` order.

  Raises:
    KeyError: an unknown table, naming the known ones.
  """
  if name not in TABLES:
    raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")
  dataset, labeled = TABLES[name]
  return [e for e in ENTRIES if e.dataset == dataset and e.labeled == labeled]


def lookup(method: str, dataset: str, labeled: int) -> Entry | None:
  """The published entry of `method` on (`dataset`, `labeled`), or None."""
  for e in ENTRIES:
    if (e.method, e.dataset, e.labeled) == (method, dataset, labeled):
      return e
  return None


def band(method: str) -> tuple[float, str] | None:
  """(± Dice points, where it is reported) for `method`, or None (use the seeds' own std)."""
  return BANDS.get(method)
