"""Training augmentation with the quirks of the upstream loaders.

Volumes [D, H, W]: ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (RandomRotFlip, RandomCrop).
Slices [H, W] (ACDC): ``HiLab-git/SSL4MIS: code/dataloaders/dataset.py`` (RandomGenerator), below.
Randomness comes from an explicit ``numpy.random.Generator`` instead of the global numpy RNG.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def random_rot_flip(
  image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
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


def random_crop(
  image: np.ndarray, label: np.ndarray, patch: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------------------------------------
# 2D slices (ACDC): SSL4MIS RandomGenerator.
# Upstream: ``HiLab-git/SSL4MIS: code/dataloaders/dataset.py`` (RandomGenerator, random_rot_flip,
# random_rotate); byte-for-byte the same functions in ``DeepMed-Lab-ECNU/BCP`` and ``SongwuJob/CML``.
# ---------------------------------------------------------------------------------------------------

# Rotation angles in degrees: upstream ``np.random.randint(-20, 20)``, upper bound exclusive.
ROTATE_ANGLES = (-20, 20)


def random_rotate_2d(
  image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Rotates image and label by the same integer angle ~ U{-20..19} degrees.

  ``scipy.ndimage.rotate(x, angle, order=0, reshape=False)`` for both (nearest neighbour, so label
  values are preserved and image intensities are only moved; corners filled with 0, shape kept).

  Args:
    image: [H, W].
    label: [H, W].
    rng: numpy Generator; draws one integer.
  """
  angle = int(rng.integers(*ROTATE_ANGLES))
  image = ndimage.rotate(image, angle, order=0, reshape=False)
  label = ndimage.rotate(label, angle, order=0, reshape=False)
  return image, label


def zoom_to(x: np.ndarray, size: Sequence[int], order: int = 0) -> np.ndarray:
  """``scipy.ndimage.zoom(x, size / x.shape, order)``: resample [H, W] (or [D, H, W]) to ``size``.

  As upstream, the zoom factors are out/in per axis; scipy rounds the output shape, which for these
  factors is exactly ``size``.
  """
  factors = tuple(int(s) / d for s, d in zip(size, x.shape))
  out = ndimage.zoom(x, factors, order=order)
  if out.shape != tuple(int(s) for s in size):  # cannot happen for factors s/d; guard anyway
    raise ValueError(f"zoom of {x.shape} to {tuple(size)} gave {out.shape}")
  return out


def random_generator_2d(
  image: np.ndarray, label: np.ndarray, output_size: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """SSL4MIS ``RandomGenerator(output_size)`` for one 2D slice.

  With probability 1/2: ``random_rot_flip`` (rot90 by k ~ U{0..3}, then ALWAYS one flip of axis 0
  or 1); else with probability 1/2: ``random_rotate_2d`` (U{-20..19} degrees, nearest); else
  nothing. Then image AND label are zoomed to ``output_size`` with order 0 (nearest), as upstream.

  Upstream draws the two branch decisions with Python's ``random.random() > 0.5`` and the
  parameters with numpy's global RNG; here everything comes from ``rng`` in this order:
  u1 = rng.random(); if u1 > 0.5: k, axis; else u2 = rng.random(); if u2 > 0.5: angle.

  Args:
    image: float [H, W].
    label: int [H, W].
    output_size: (oh, ow), e.g. (256, 256).
    rng: numpy Generator.

  Returns:
    (image float32 [oh, ow], label uint8 [oh, ow]).
  """
  if image.ndim != 2 or image.shape != label.shape:
    raise ValueError(
      f"random_generator_2d: expected image and label [H, W] of the same shape, got "
      f"{image.shape} and {label.shape}"
    )
  if len(tuple(output_size)) != 2:
    raise ValueError(f"random_generator_2d: output_size must have 2 sizes, got {output_size}")
  if rng.random() > 0.5:
    image, label = random_rot_flip(image, label, rng)
  elif rng.random() > 0.5:
    image, label = random_rotate_2d(image, label, rng)
  image = zoom_to(np.asarray(image, np.float32), output_size, order=0)
  label = zoom_to(np.asarray(label, np.uint8), output_size, order=0)
  return image, label
