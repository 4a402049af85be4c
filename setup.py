"""Installs deeplab_dpc: `pip install -e .` (add `-r requirements-dev.txt` for tests)."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _requirements(name):
    lines = (HERE / name).read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith(("#", "-r"))]


setup(
    name="deeplab_dpc",
    version="0.1.0",
    description="Dense Prediction Cells (Chen et al., NeurIPS 2018) on TensorFlow 2 / Keras 3",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["deeplab_dpc", "deeplab_dpc.*", "tools", "tools.*"]),
    # The published cell, for search --enqueue_published wherever the package is installed.
    package_data={"deeplab_dpc.nas": ["specs/*.json"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "test": _requirements("requirements-dev.txt"),
        # tools/build_cityscapes_data.py takes Cityscapes' own label table from it.
        "cityscapes": ["cityscapesscripts==2.3.0"],
        # deeplab_dpc.search --executor=ray.
        "ray": ["ray==2.60.0"],
        # python -m deeplab_dpc.serve: the model server (Ray Serve brings FastAPI and Uvicorn), and
        # export_model --onnx_path / serve --runtime=onnx (tf2onnx 1.17 converts TensorFlow 2.21's graphs).
        "serve": ["ray[serve]==2.60.0", "tf2onnx==1.17.0", "onnx==1.23.2", "onnxruntime==1.32.0"],
        # pip install -e .[torch]: Keras' PyTorch backend for the proxy (KERAS_BACKEND=torch); see WORKSPACE.md.
        "torch": ["torch>=2.4"],
    },
    entry_points={
        "console_scripts": [
            "deeplab-demo=deeplab_dpc.demo:run",
            "deeplab-model-stats=deeplab_dpc.model_stats:console_main",
            "deeplab-train=deeplab_dpc.train:console_main",
            "deeplab-eval=deeplab_dpc.eval:console_main",
            "deeplab-vis=deeplab_dpc.vis:console_main",
            "deeplab-export-model=deeplab_dpc.export_model:console_main",
            "deeplab-cache-features=deeplab_dpc.cache_features:console_main",
            "deeplab-proxy-train=deeplab_dpc.proxy_train:console_main",
            "deeplab-search=deeplab_dpc.search:console_main",
            "deeplab-rerank=deeplab_dpc.rerank:console_main",
            "deeplab-analyze=deeplab_dpc.analyze:console_main",
            "deeplab-copy-search=deeplab_dpc.copy_search:console_main",
            "deeplab-serve=deeplab_dpc.serve:console_main",
        ]
    },
)
