"""``python -m jaxseg.prepare <dataset> --raw DIR --out DIR [--overwrite]``.

Datasets and the raw layout each expects (details in each module's docstring):

  la         2018 Atrial Segmentation Challenge: <raw>/**/<id>/lgemri.nrrd + laendo.nrrd
  acdc       ACDC: <raw>/**/patientNNN/patientNNN_frameNN.nii.gz + ..._gt.nii.gz
  brats      BraTS 2019: <raw>/**/<id>/<id>_flair.nii.gz + <id>_seg.nii.gz
  pancreas   NIH Pancreas-CT: <raw>/**/PANCREAS_NNNN/**/*.dcm + <raw>/**/labelNNNN.nii.gz
  promise12  PROMISE12: <raw>/**/CaseNN.mhd + CaseNN_segmentation.mhd
  isles      ISLES 2022 (BIDS): <raw>/sub-*/ses-*/dwi/*_dwi.nii.gz, *_adc.nii.gz and
             <raw>/derivatives/sub-*/ses-*/*_msk.nii.gz

Re-running the same command skips the cases already prepared with the same settings, so an
interrupted preparation is finished by running it again. Exit status 2 and a message naming the
file for bad raw input.
"""

import argparse
import importlib
import pathlib
import sys

from jaxseg.prepare.common import PrepareError
from jaxseg.prepare.common import run

DATASETS = ("la", "acdc", "brats", "pancreas", "promise12", "isles")


def _int_triple(text: str) -> tuple[int, int, int]:
  parts = [int(p) for p in text.split(",")]
  if len(parts) != 3 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f"expected three positive integers X,Y,Z, got {text!r}")
  return tuple(parts)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m jaxseg.prepare",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("dataset", choices=DATASETS)
  p.add_argument("--raw", required=True, type=pathlib.Path, help="the unpacked public release")
  p.add_argument("--out", required=True, type=pathlib.Path, help="the data.root to train from")
  p.add_argument("--overwrite", action="store_true", help="redo cases already prepared")
  p.add_argument(
    "--splits",
    type=pathlib.Path,
    default=None,
    help="folder holding the upstream split lists to copy (e.g. UA-MT's data/ for la: "
    "train.list, test.list); default: the split each module documents",
  )
  p.add_argument("--seed", type=int, default=0, help="la: seed of the random crop margins")
  p.add_argument(
    "--vol_size",
    type=_int_triple,
    default=None,
    help="promise12: the centre crop X,Y,Z after resampling (default 128,128,64)",
  )
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  module = importlib.import_module(f"jaxseg.prepare.{args.dataset}")
  options = {"splits": args.splits, "seed": args.seed}
  if args.vol_size is not None:
    options["vol_size"] = args.vol_size
  try:
    run(module.PREPARER, args.raw, args.out, options, overwrite=args.overwrite)
  except PrepareError as e:
    print(f"[prepare] error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
