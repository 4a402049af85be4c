"""The optimizer training and the proxy use: Keras' SGD, minus a per-trace leak on TensorFlow."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class SGD(keras.optimizers.SGD):
    """Keras' SGD (momentum, EMA: all its arguments), without the all-reduce of gradients where there is
    one replica.

    On TensorFlow, Keras' optimizer sums each step's gradients over replicas even under TensorFlow's
    default, one-replica strategy, and that all-reduce registers a custom gradient in TensorFlow's
    process-wide gradient registry on every trace, which never forgets it: its closure keeps the whole
    traced train step alive. A search worker trains hundreds of trials in one process (20 MB a trial on
    CamVid's proxy, with the slots also made inside the trace; flat without both, tested), and
    ``bench/fidelity_truth.py`` dozens of fine-tunes. Under a real distribution strategy
    (``MirroredStrategy`` for ``--num_clones``) the all-reduce is Keras' own. Other backends never call it.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        import tensorflow as tf  # noqa: PLC0415  (only Keras' TensorFlow optimizer calls this)

        if not tf.distribute.has_strategy():
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)
