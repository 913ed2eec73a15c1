"""Model registry: `MODELS` maps a config's model name to its flax module class."""
from __future__ import annotations

import flax.linen as nn

from jaxseg.models.vnet import VNet

MODELS: dict[str, type[nn.Module]] = {
    'vnet': VNet,
}


def get(name: str, **kwargs) -> nn.Module:
  """Builds model `name` (a `MODELS` key) with constructor `kwargs`."""
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; known models: {sorted(MODELS)}')
  return MODELS[name](**kwargs)
