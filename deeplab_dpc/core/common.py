"""Conventions shared by every layer: weight decay and batch norm defaults.

DeepLab (slim) regularises with ``weight_decay * sum(w**2) / 2``; Keras' ``L2(l)``
adds ``l * sum(w**2)``. ``l2_regularizer`` converts, so a DeepLab recipe's
``weight_decay`` means the same here.
"""

import keras

# DeepLab's batch norm for the context module and decoder (core/model.py).
BATCH_NORM_MOMENTUM = 0.9997
BATCH_NORM_EPSILON = 1e-5


def l2_regularizer(weight_decay):
    """Returns the Keras regulariser equal to slim's ``l2_regularizer(weight_decay)``.

    Args:
        weight_decay: float >= 0, DeepLab's weight decay. 0 means no regulariser.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay == 0:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)
