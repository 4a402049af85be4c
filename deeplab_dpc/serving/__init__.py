"""Serving an exported model: request parsing and validation (``requests``), the model runtimes
(``runtime``) and the Ray Serve application (``app``) behind ``python -m deeplab_dpc.serve``."""
