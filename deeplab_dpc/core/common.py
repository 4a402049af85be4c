"""Conventions shared by every layer: weight decay and batch norm defaults.

DeepLab (slim) regularises with ``weight_decay * sum(w**2) / 2``; Keras' ``L2(l)``
adds ``l * sum(w**2)``. ``l2_regularizer`` converts, so a DeepLab recipe's
``weight_decay`` means the same here.
"""

import keras

# DeepLab's batch norm for the context module and decoder (core/model.py).
BATCH_NORM_MOMENTUM = 0.9997
BATCH_NORM_EPSILON = 1e-5

# DeepLab's weight initialisers (TF1 ``truncated_normal_initializer`` stddevs):
# ``split_separable_conv2d`` in research/deeplab/core/utils.py (DPC, ASPP and
# decoder separable convs), the logits in ``get_branch_logits``, and the
# backbones' arg scopes (mobilenet ``training_scope`` and ``xception_arg_scope``,
# both 0.09 for every conv kernel). 1x1 convs outside those scopes keep slim's
# default, Xavier uniform, which is Keras' glorot_uniform.
DEPTHWISE_STDDEV = 0.33
POINTWISE_STDDEV = 0.06
LOGITS_STDDEV = 0.01
BACKBONE_STDDEV = 0.09


INITIALIZERS = ("deeplab", "keras")


def kernel_initializer(initializer, stddev):
    """A new kernel initialiser: DeepLab's truncated normal of ``stddev``, or Keras' default.

    Args:
        initializer: "deeplab" (``truncated_normal(stddev)``) or "keras"
            (glorot_uniform, what every conv used before DeepLab's were adopted).
        stddev: DeepLab's stddev for this kernel.
    """
    if initializer not in INITIALIZERS:
        raise ValueError(f"initializer={initializer!r} is unknown; valid: {list(INITIALIZERS)}")
    return truncated_normal(stddev) if initializer == "deeplab" else keras.initializers.GlorotUniform()


def separable_stddevs(initializer):
    """``SeparableConvBNReLU``'s (depthwise_stddev, pointwise_stddev) for ``initializer``.

    None means Keras' glorot_uniform.
    """
    kernel_initializer(initializer, 1.0)  # validates
    return (DEPTHWISE_STDDEV, POINTWISE_STDDEV) if initializer == "deeplab" else (None, None)


def truncated_normal(stddev):
    """A new ``keras.initializers.TruncatedNormal(stddev=stddev)``.

    It equals TF1's ``truncated_normal_initializer`` (values beyond two
    standard deviations are redrawn). Make one per layer: an unseeded Keras
    initialiser instance returns the same values every time it is called, so
    sharing one would give equal-shaped layers equal weights. On the PyTorch
    backend it is ``RedrawnTruncatedNormal``, which keeps that bound there too.

    Args:
        stddev: standard deviation of the normal before truncation.
    """
    if keras.backend.backend() == "torch":
        return RedrawnTruncatedNormal(mean=0.0, stddev=float(stddev))
    return keras.initializers.TruncatedNormal(mean=0.0, stddev=float(stddev))


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class RedrawnTruncatedNormal(keras.initializers.TruncatedNormal):
    """Keras' ``TruncatedNormal`` whose values all lie within two standard deviations, on every backend.

    Keras' PyTorch backend draws four normals per value and keeps the first inside the bounds, or the
    first of the four when none is: about 4e-6 of its values (0.0455 ** 4) lie beyond, up to ~3
    standard deviations (several in a MobileNet-v2). Those are drawn again, from the same seed advanced,
    until none is left; other values are Keras' own. TensorFlow and JAX draw within the bounds already:
    there the check finds nothing to redraw.
    """

    def __call__(self, shape, dtype=None):
        values = super().__call__(shape, dtype=dtype)
        bound = 2.0 * self.stddev
        for attempt in range(1, 100):
            outside = keras.ops.greater(keras.ops.abs(values - self.mean), bound)
            if not bool(keras.ops.convert_to_numpy(keras.ops.any(outside))):
                return values
            seed = self.seed + attempt if isinstance(self.seed, int) else self.seed
            again = keras.random.truncated_normal(shape, self.mean, self.stddev, dtype=dtype, seed=seed)
            values = keras.ops.where(outside, again, values)
        raise RuntimeError(f"truncated normal of stddev {self.stddev}: values beyond {bound} after 100 draws")


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
