"""Model registry: `MODELS` maps a config's model name to its flax module class."""

from __future__ import annotations

import flax.linen as nn

from jaxseg import errors
from jaxseg.models.bcp_vnet import BCPVNet
from jaxseg.models.cml_vnet import CMLVNet
from jaxseg.models.resvnet import ResVNet
from jaxseg.models.unet2d import CMLUNet2d
from jaxseg.models.unet2d import UNet2d
from jaxseg.models.unet3d import UNet3D
from jaxseg.models.vnet import VNet
from jaxseg.models.vnet_milletari import VNetMilletari
from jaxseg.models.vnet_sdf import VNetSDF

MODELS: dict[str, type[nn.Module]] = {
  'vnet': VNet,
  'resvnet': ResVNet,
  'vnet_sdf': VNetSDF,
  'bcp_vnet': BCPVNet,
  'cml_vnet': CMLVNet,
  'unet3d_dycon': UNet3D,
  'unet2d': UNet2d,
  'cml_unet2d': CMLUNet2d,
  'vnet_milletari': VNetMilletari,
}


def supports_remat(name: str) -> bool:
  """Whether model `name` (a `MODELS` key) can rematerialise its blocks (a `remat` attribute)."""
  return 'remat' in MODELS[name].__dataclass_fields__


def remat_unsupported(name: str) -> str:
  """The error message for `model.remat=True` on model `name`, which has no `remat`."""
  with_remat = sorted(n for n in MODELS if supports_remat(n))
  return (
    f'model.remat=True: model {name!r} has no rematerialisation; the models with it: {with_remat}'
  )


def get(name: str, remat: bool = False, **kwargs) -> nn.Module:
  """Builds model `name` (a `MODELS` key) with constructor `kwargs`; `remat=True` (config
  `model.remat`) recomputes its encoder / decoder blocks' activations in the backward pass instead
  of storing them, and is an error for a model without that option."""
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; known models: {sorted(MODELS)}')
  if remat:
    if not supports_remat(name):
      raise errors.ConfigError(remat_unsupported(name))
    kwargs['remat'] = True
  return MODELS[name](**kwargs)
