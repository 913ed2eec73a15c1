"""Model registry: `MODELS` maps a config's model name to its flax module class."""

from __future__ import annotations

import flax.linen as nn

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


def get(name: str, **kwargs) -> nn.Module:
  """Builds model `name` (a `MODELS` key) with constructor `kwargs`."""
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; known models: {sorted(MODELS)}')
  return MODELS[name](**kwargs)
