"""Raw public releases -> the h5 layouts the data readers read: ``python -m jaxseg.prepare``.

One module per dataset (la, acdc, brats, pancreas, promise12, isles), each following the upstream
preprocessing its docstring names; common.py holds the driver (checks, atomic writes, resume, list
files, the ``dataset.json`` fingerprint).
"""

from jaxseg.prepare.common import PrepareError
from jaxseg.prepare.common import run

__all__ = ["PrepareError", "run"]
