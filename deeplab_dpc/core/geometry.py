"""Sizes derived from crop sizes and output strides: pure, tested functions.

DeepLab's arithmetic (``core/utils.py``, ``core/dense_prediction_cell.py``):

* ``scale_dimension(dim, scale) = int((dim - 1) * scale + 1)``: a 513 crop at
  output stride 16 gives 33 feature cells.
* pyramid pooling with grid g at output stride s: a window of
  ``scale_dimension(crop, 1 / (s * g))`` cells applied with stride 1, VALID,
  then a bilinear resize back to the feature size (crop 513, s 16, g 4: 33x33
  features, a 9x9 window, 25x25 pooled).

Our backbones pad "same", so a feature map has ``ceil(size / s)`` cells per
side for any size (``feature_size``); for DeepLab's crops (``k * s + 1``) the
two agree. Our pyramid pooling derives its window from the feature map it
receives: ``pyramid_pooling_window(f, g) = (f - 1) // g + 1``, which equals
DeepLab's window whenever the crop is the input size, because
``(crop - 1) // (s * g) == ((crop - 1) // s) // g``. A model therefore pools to
the same grid of the image at every input size (multi-scale inference, whole
image evaluation, export), as DeepLab does when it evaluates whole images.
"""

from __future__ import annotations

import math

import numpy as np


def scale_dimension(dim: int, scale: float) -> int:
    """DeepLab's ``utils.scale_dimension`` for Python integers."""
    return int((float(dim) - 1.0) * scale + 1.0)


def feature_size(size: int, output_stride: int) -> int:
    """Cells per side of a feature map at ``output_stride`` ("same" padding)."""
    if size < 1 or output_stride < 1:
        raise ValueError(f"size and output_stride must be positive, got {size}, {output_stride}")
    return math.ceil(size / output_stride)


def pyramid_pooling_window(features: int, grid: int) -> int:
    """Window (cells) of pyramid pooling with ``grid`` cells over ``features``."""
    if features < 1 or grid < 1:
        raise ValueError(f"features and grid must be positive, got {features}, {grid}")
    return (features - 1) // grid + 1


def deeplab_pyramid_pooling_arguments(
    crop_size: tuple[int, int], output_stride: int, grid_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """DeepLab's ``_get_pyramid_pooling_arguments``: (resize size, pool window)."""
    resize = tuple(scale_dimension(c, 1.0 / output_stride) for c in crop_size)
    window = tuple(scale_dimension(c, 1.0 / (output_stride * g)) for c, g in zip(crop_size, grid_size))
    return resize, window


def dpc_rate_multiplier(output_stride: int) -> int:
    """Rates of DPC/ASPP convs are given at output stride 16; scale them.

    Output stride 8 doubles them; 32 is refused, as in DeepLab (where
    ``conv_rate_multiplier = 16 // output_stride`` must be >= 1).
    """
    if output_stride not in (8, 16):
        raise ValueError(
            f"output_stride={output_stride}: the context module's atrous rates are defined for "
            "output_stride 8 or 16 (DeepLab refuses 32 for the dense prediction cell)"
        )
    return 16 // output_stride


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` float32 weights of a 1-D bilinear resize with aligned corners (DeepLab's resize)."""
    matrix = np.zeros((out_size, in_size), np.float32)
    if out_size == 1 or in_size == 1:
        matrix[:, 0] = 1.0
        return matrix
    position = np.arange(out_size) * ((in_size - 1) / (out_size - 1))
    low = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight = (position - low).astype(np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix
