"""Evaluation: confusion-matrix mIoU, multi-scale + flip inference, the eval loop."""
