"""Training: learning-rate schedules, the loss, checkpoints, the training loop."""
