"""A generated segmentation dataset: the built-in default that needs no download.

Each image is a noisy background (class 0) with random rectangles and
ellipses; each class has its own colour, so a small model learns it in a few
hundred steps. NumPy and OpenCV only.
"""

from __future__ import annotations

import cv2
import numpy as np


def class_colours(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed, well-separated colour per class: [num_classes, 3] uint8."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(num_classes, 3))
    colours[0] = (128, 128, 128)
    return colours.astype(np.uint8)


def make_example(
    height: int, width: int, num_classes: int, rng: np.random.Generator, max_shapes: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [h, w, 3], label uint8 [h, w]) pair."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    colours = class_colours(num_classes)
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, max_shapes + 1)):
        cls = int(rng.integers(1, num_classes))
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        ry = int(rng.integers(max(2, height // 12), max(3, height // 3)))
        rx = int(rng.integers(max(2, width // 12), max(3, width // 3)))
        if rng.random() < 0.5:
            cv2.ellipse(label, (cx, cy), (rx, ry), float(rng.integers(0, 180)), 0, 360, cls, -1)
        else:
            cv2.rectangle(label, (cx - rx, cy - ry), (cx + rx, cy + ry), cls, -1)
    image = colours[label].astype(np.float32)
    image += rng.normal(0.0, 12.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_dataset(
    num_images: int, height: int, width: int, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``num_images`` examples: images [N, h, w, 3] uint8, labels [N, h, w] uint8."""
    rng = np.random.default_rng(seed)
    pairs = [make_example(height, width, num_classes, rng) for _ in range(num_images)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def write_segnet_folders(
    root, splits: dict[str, int], height: int, width: int, num_classes: int, seed: int = 0
) -> str:
    """Writes a generated dataset in the SegNet/CamVid layout and a JSON descriptor.

    ``root/<split>/NAME.png``, ``root/<split>annot/NAME.png`` (class ids),
    ``root/<split>.txt`` (one file name per line), and ``root/dataset.json``
    (a dataset descriptor for ``--dataset``). Returns the descriptor's path.
    """
    import json
    import os

    os.makedirs(root, exist_ok=True)
    for offset, (split, count) in enumerate(sorted(splits.items())):
        images, labels = make_dataset(count, height, width, num_classes, seed=seed + 1000 * offset)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        os.makedirs(os.path.join(root, f"{split}annot"), exist_ok=True)
        names = []
        for i, (image, label) in enumerate(zip(images, labels)):
            name = f"{split}_{i:05d}.png"
            cv2.imwrite(os.path.join(root, split, name), image[:, :, ::-1])
            cv2.imwrite(os.path.join(root, f"{split}annot", name), label)
            names.append(name)
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    descriptor = {
        "name": "synthetic",
        "num_classes": num_classes,
        "ignore_label": 255,
        "splits": dict(splits),
        "class_names": ["background"] + [f"shape{i}" for i in range(1, num_classes)],
        "colormap": "pascal",
    }
    path = os.path.join(root, "dataset.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(descriptor, f, indent=1)
    return path
