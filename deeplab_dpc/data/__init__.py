"""Data: dataset descriptors, DeepLab's TFRecord format, conversion, colormaps.

* ``datasets``: immutable dataset descriptors (classes, ignore label, split
  sizes, class names, colormap) and user-defined JSON descriptors;
* ``tfrecord``: DeepLab's record keys and shard names; a tf.data reader and a
  pure-Python one;
* ``conversion``: image/label files -> verified, resumable TFRecord shards,
  shared by ``tools/build_*_data.py``;
* ``colormaps``: label colours, label -> colour image, overlays.

Importing this package imports no TensorFlow; ``tfrecord`` and ``conversion``
import it only in the functions that need it.
"""
