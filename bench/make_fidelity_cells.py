r"""Draws the fixed set of cells that proxies are scored against (the fidelity set), before any is scored.

    python bench/make_fidelity_cells.py --seed=2026 --output=experiments/camvid/fidelity_cells.json

The set has to cover the ways cells differ, not just the typical cell a uniform
sampler draws, so that a rank correlation over it says whether a proxy orders
the kinds of cells a search meets. It holds:

* the two references: DeepLab's published Cityscapes cell and the
  ASPP-equivalent cell (``space.reference_cells``);
* from a pool of ``--pool`` distinct cells drawn from the search space with
  ``--seed``, three cells from each group below, drawn at random (same seed)
  among the pool's members of the group that are not chosen yet. The pool's
  sampler picks each branch's kind (1x1 conv, 3x3 atrous separable conv,
  pyramid pooling) with equal probability, then its parameters and input
  uniformly: the space's uniform sampler (``SearchSpace.sample``) draws 64 of
  81 operations as separable convs and 1 as a 1x1 conv, so its cells hardly
  differ in kind (in a pool of 20,000 of its cells, none has three 1x1
  convs). The groups:
  - ``pooling_heavy``: three or more pyramid-pooling branches;
  - ``separable_heavy``: four or more 3x3 atrous separable convs;
  - ``conv1x1_heavy``: three or more 1x1 convs;
  - ``chained``: a path of four or more branches from the backbone;
  - ``parallel``: every branch reads the backbone;
  - ``small``: multiply-adds in the pool's lowest decile (at 256 filters on
    23x30x320 features, CamVid's stride-16 features);
  - ``large``: multiply-adds in the pool's highest decile;
  - ``uniform``: any cell of the pool;
* two known-bad cells built by hand: five chained 1x1 pyramid poolings (each
  branch averages the previous one to a single value: no spatial information
  reaches the logits but the projection's) and five parallel image-level
  poolings (the same, without the chain).

Each cell is written with its name, group, canonical graph hash, DeepLab JSON
spec, depth, branch counts and its cost at 256 filters, so that the file
says how it was drawn. The output is refused if it exists (the set is fixed once
scored); ``--overwrite`` replaces it.
"""

from __future__ import annotations

import os
import random
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_dpc.core.spec import BACKBONE_INPUT, Branch, CellSpec, SearchSpace  # noqa: E402
from deeplab_dpc.fileio import write_json  # noqa: E402
from deeplab_dpc.nas import space as space_lib  # noqa: E402
from deeplab_dpc.nas.proxy import cell_cost  # noqa: E402

FEATURE_SHAPE = (23, 30, 320)  # CamVid 360x480 at output stride 16, MobileNet-v2's 320 channels
COST_FILTERS = 256
GROUPS = ("pooling_heavy", "separable_heavy", "conv1x1_heavy", "chained", "parallel", "small", "large", "uniform")

flags.DEFINE_integer("seed", 2026, "Seed of the pool and of the draws within each group.")
flags.DEFINE_integer("pool", 20000, "Cells drawn uniformly from the space to choose from.")
flags.DEFINE_integer("per_group", 3, "Cells drawn from each group.")
flags.DEFINE_string("output", "experiments/camvid/fidelity_cells.json", "Where the set is written.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing output (never once it has been scored).")


def depth(spec: CellSpec) -> int:
    """Branches on the longest path from the backbone (1: every branch reads the backbone)."""
    lengths: list[int] = []
    for branch in spec.branches:
        lengths.append(1 if branch.input == BACKBONE_INPUT else lengths[branch.input] + 1)
    return max(lengths)


def describe(spec: CellSpec) -> dict:
    """The properties the groups are defined on, and the cost at 256 filters."""
    cost = cell_cost(spec, FEATURE_SHAPE, COST_FILTERS)
    return {
        "depth": depth(spec),
        "pooling": sum(b.op == "pyramid_pooling" for b in spec.branches),
        "separable": sum(b.is_separable for b in spec.branches),
        "conv1x1": sum(b.op == "conv" and not b.is_separable for b in spec.branches),
        "madds_256": cost["madds"],
        "params_256": cost["params"],
    }


def known_bad() -> dict[str, CellSpec]:
    pool = Branch("pyramid_pooling", grid_size=(1, 1))
    return {
        "bad_chained_pooling": CellSpec(tuple(pool.with_input(i - 1) for i in range(5))),
        "bad_parallel_image_pooling": CellSpec(tuple(pool for _ in range(5))),
    }


def sample_by_kind(space: SearchSpace, rng: random.Random) -> CellSpec:
    """A cell whose branches each pick a kind of operation with equal probability, then its
    parameters and its input uniformly."""
    ops = space.operations()
    kinds = [
        [op for op in ops if op.op == "conv" and not op.is_separable],
        [op for op in ops if op.is_separable],
        [op for op in ops if op.op == "pyramid_pooling"],
    ]
    return CellSpec(
        tuple(rng.choice(rng.choice(kinds)).with_input(rng.randrange(-1, i)) for i in range(space.num_branches))
    )


def draw_cells(seed: int, pool_size: int, per_group: int) -> list[dict]:
    """The whole set, in a fixed order (references, groups, known-bad); pure function of its arguments."""
    space = SearchSpace()
    rng = random.Random(seed)
    pool, seen = [], set()
    while len(pool) < pool_size:
        spec = sample_by_kind(space, rng)
        graph = spec.canonical_hash()
        if graph not in seen:
            seen.add(graph)
            pool.append((spec, graph, describe(spec)))
    madds = sorted(p[2]["madds_256"] for p in pool)
    low, high = madds[len(madds) // 10], madds[(9 * len(madds)) // 10]
    members = {
        "pooling_heavy": lambda d: d["pooling"] >= 3,
        "separable_heavy": lambda d: d["separable"] >= 4,
        "conv1x1_heavy": lambda d: d["conv1x1"] >= 3,
        "chained": lambda d: d["depth"] >= 4,
        "parallel": lambda d: d["depth"] == 1,
        "small": lambda d: d["madds_256"] <= low,
        "large": lambda d: d["madds_256"] >= high,
        "uniform": lambda d: True,
    }
    cells: list[dict] = []
    chosen: set[str] = set()

    def add(name, group, spec, properties=None):
        graph = spec.canonical_hash()
        chosen.add(graph)
        cells.append(
            {"name": name, "group": group, "graph_hash": graph, **(properties or describe(spec)),
             "spec": spec.to_list()}
        )

    for name, spec in space_lib.reference_cells().items():
        add(name, "reference", spec)
    for group in GROUPS:
        candidates = [p for p in pool if members[group](p[2]) and p[1] not in chosen]
        for i, (spec, _, properties) in enumerate(rng.sample(candidates, per_group)):
            add(f"{group}_{i}", group, spec, properties)
    for name, spec in known_bad().items():
        add(name, "known_bad", spec)
    return cells


def main(argv):
    del argv
    fv = flags.FLAGS
    if os.path.exists(fv.output) and not fv.overwrite:
        raise app.UsageError(f"--output={fv.output} exists: the set is fixed once scored (--overwrite replaces it)")
    cells = draw_cells(fv.seed, fv.pool, fv.per_group)
    command = (
        f"python bench/make_fidelity_cells.py --seed={fv.seed} --pool={fv.pool} "
        f"--per_group={fv.per_group} --output={fv.output}"
    )
    write_json(
        fv.output,
        {
            "description": (
                "The fidelity set: cells fixed before any was scored, against which proxies are ranked "
                "(bench/fidelity.py). References, then per_group cells from each group of a seeded "
                "uniform pool, then two known-bad cells; how each group is defined: "
                "bench/make_fidelity_cells.py."
            ),
            "command": command,
            "seed": fv.seed,
            "pool": fv.pool,
            "feature_shape": list(FEATURE_SHAPE),
            "cost_filters": COST_FILTERS,
            "cells": cells,
        },
    )
    print(f"{len(cells)} cells written to {fv.output}")
    for c in cells:
        print(
            f"  {c['name']:28s} depth {c['depth']} pool {c['pooling']} sep {c['separable']} "
            f"1x1 {c['conv1x1']} {c['madds_256'] / 1e9:6.2f} GMAdds"
        )
    print(f"# command: {command}")


if __name__ == "__main__":
    app.run(main)
