"""Model code: cell spec, search space, Keras layers, backbones, builder."""
