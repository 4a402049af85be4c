"""Export: checkpoints to a TensorFlow Serving SavedModel (uint8 or encoded images in,
labels out) and to TFLite; ``load_model_for_inference`` for evaluation and visualisation."""
