"""Training augmentation for volumes [D, H, W], with the quirks of the upstream LA loader.

Upstream reference: ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (RandomRotFlip, RandomCrop).
Randomness comes from an explicit ``numpy.random.Generator`` instead of the global numpy RNG.
"""
from typing import Sequence

import numpy as np


def random_rot_flip(image: np.ndarray, label: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Rotates by k*90 degrees in the plane of axes (0, 1), then flips axis 0 or 1.

  k ~ U{0..3}, then axis ~ U{0, 1}. As upstream, there is ALWAYS exactly one flip, so the result
  is one of the four in-plane reflections (never the identity, never a pure rotation). For odd k
  the extents of axes 0 and 1 swap. Same transform for image and label.

  Args:
    image: [D, H, W] (any trailing axes are carried along).
    label: same spatial shape as ``image``.
    rng: numpy Generator; draws two integers.

  Returns:
    (image, label), contiguous copies.
  """
  k = int(rng.integers(0, 4))
  image = np.rot90(image, k, axes=(0, 1))
  label = np.rot90(label, k, axes=(0, 1))
  axis = int(rng.integers(0, 2))
  return np.ascontiguousarray(np.flip(image, axis)), np.ascontiguousarray(np.flip(label, axis))


def crop_padding(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
  """Per-axis symmetric zero padding that :func:`random_crop` applies before cropping.

  If ANY axis is <= its patch size, EVERY axis is padded on both sides by
  ``max((patch - dim) // 2 + 3, 0)`` (floor division, so an axis just larger than its patch may
  still get a little padding); otherwise nothing is padded.
  """
  if len(shape) != len(patch):
    raise ValueError(f"patch {tuple(patch)} and volume shape {tuple(shape)} differ in rank")
  if any(d <= p for d, p in zip(shape, patch)):
    return tuple(max((p - d) // 2 + 3, 0) for d, p in zip(shape, patch))
  return (0,) * len(shape)


def random_crop(image: np.ndarray, label: np.ndarray, patch: Sequence[int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads as :func:`crop_padding` says, then crops a random ``patch``.

  Start per axis ~ ``rng.integers(0, dim - patch)``: the upper bound is exclusive as in upstream
  ``np.random.randint``, so the last valid start ``dim - patch`` is never drawn. After the padding
  rule ``dim - patch >= 1`` always holds (an axis with ``dim <= patch`` triggers padding of at least
  3 per side and ends at least 5 voxels longer than the patch), so the case ``dim == patch`` that
  would make upstream's ``randint(0, 0)`` fail cannot arise.

  Args:
    image: [D, H, W] float.
    label: [D, H, W] int, padded with 0 (background).
    patch: (pd, ph, pw).
    rng: numpy Generator; draws one integer per axis, in axis order.

  Returns:
    (image [pd, ph, pw], label [pd, ph, pw]).
  """
  patch = tuple(int(p) for p in patch)
  if image.shape != label.shape:
    raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
  pad = crop_padding(image.shape, patch)
  if any(pad):
    widths = [(p, p) for p in pad]
    image = np.pad(image, widths, mode="constant", constant_values=0)
    label = np.pad(label, widths, mode="constant", constant_values=0)
  starts = [int(rng.integers(0, d - p)) for d, p in zip(image.shape, patch)]
  window = tuple(slice(s, s + p) for s, p in zip(starts, patch))
  return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])
