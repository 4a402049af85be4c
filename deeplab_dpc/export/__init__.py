"""Export: checkpoints to a TensorFlow Serving SavedModel (uint8 or encoded images in,
labels out) and to TFLite."""
