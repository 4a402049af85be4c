"""deeplab_dpc: Dense Prediction Cells (Chen et al., NeurIPS 2018) on Keras 3.

Importing the package is cheap and needs no TensorFlow: submodules that need
TensorFlow import it themselves.
"""

__version__ = "0.1.0"
