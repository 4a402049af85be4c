"""The DPC search space as Optuna parameters: readable categorical choices per branch.

A cell of B branches is ``2 B`` categorical parameters, ``b{i}_input`` (-1 for
the backbone, or an earlier branch) and ``b{i}_op``, one of the space's
operations written as a short name:

* ``conv1x1``;
* ``sep3x3_r{rh}x{rw}``: 3x3 atrous separable conv with rates (rh, rw);
* ``pool_{gh}x{gw}``: pyramid pooling to a gh x gw grid.

So the dashboard, TPE and the HParams tab all see choices a person can read,
and ``params_to_spec`` / ``spec_to_params`` convert both ways.

Example:

>>> space = SearchSpace(num_branches=2)
>>> params = {"b0_input": -1, "b0_op": "sep3x3_r6x18", "b1_input": 0, "b1_op": "pool_4x2"}
>>> spec = params_to_spec(params, space)
>>> spec_to_params(spec)["b1_op"]
'pool_4x2'
"""

from __future__ import annotations

import importlib.resources
import re
from typing import Any, Mapping

from optuna.distributions import CategoricalDistribution

from deeplab_dpc.core.spec import (
    BACKBONE_INPUT,
    CONV,
    PYRAMID_POOLING,
    Branch,
    CellSpec,
    SearchSpace,
    SpecError,
)

PUBLISHED_SPEC = "dense_prediction_cell_branch5_top1_cityscapes.json"

_SEP = re.compile(r"sep3x3_r(\d+)x(\d+)")
_POOL = re.compile(r"pool_(\d+)x(\d+)")


def op_name(branch: Branch) -> str:
    """The readable name of a branch's operation (its input left out)."""
    if branch.op == PYRAMID_POOLING:
        return "pool_%dx%d" % branch.grid_size
    if branch.kernel == (1, 1):
        return "conv1x1"
    if branch.kernel != (3, 3):
        raise SpecError(f"kernel {list(branch.kernel)} has no name in the search space (1 or 3)")
    return "sep3x3_r%dx%d" % branch.rate


def op_from_name(name: str) -> Branch:
    """The branch (reading the backbone) that ``name`` stands for; ``SpecError`` if none."""
    if name == "conv1x1":
        return Branch(CONV, kernel=(1, 1))
    match = _SEP.fullmatch(name)
    if match:
        return Branch(CONV, kernel=(3, 3), rate=(int(match[1]), int(match[2])))
    match = _POOL.fullmatch(name)
    if match:
        return Branch(PYRAMID_POOLING, grid_size=(int(match[1]), int(match[2])))
    raise SpecError(f"unknown operation name {name!r}: expected conv1x1, sep3x3_r<h>x<w> or pool_<h>x<w>")


def input_param(index: int) -> str:
    return f"b{index}_input"


def op_param(index: int) -> str:
    return f"b{index}_op"


def distributions(space: SearchSpace) -> dict[str, CategoricalDistribution]:
    """Optuna's view of ``space``: for each branch its input choices, then its operations.

    The dict's order is the order in which ``suggest_spec`` asks for them.
    """
    names = tuple(op_name(op) for op in space.operations())
    out: dict[str, CategoricalDistribution] = {}
    for i in range(space.num_branches):
        out[input_param(i)] = CategoricalDistribution(tuple(range(BACKBONE_INPUT, i)))
        out[op_param(i)] = CategoricalDistribution(names)
    return out


def spec_to_params(spec: CellSpec) -> dict[str, Any]:
    """The Optuna parameters of ``spec`` (as written, not canonicalised)."""
    params: dict[str, Any] = {}
    for i, branch in enumerate(spec.branches):
        params[input_param(i)] = branch.input
        params[op_param(i)] = op_name(branch)
    return params


def params_to_spec(params: Mapping[str, Any], space: SearchSpace) -> CellSpec:
    """The cell that ``params`` describe; ``SpecError`` naming the parameter if one is missing or
    outside ``space``."""
    branches = []
    for i in range(space.num_branches):
        for name in (input_param(i), op_param(i)):
            if name not in params:
                raise SpecError(f"parameter {name!r} missing")
        source = params[input_param(i)]
        if isinstance(source, bool) or not isinstance(source, int) or not BACKBONE_INPUT <= source < i:
            raise SpecError(f"parameter {input_param(i)!r}: {source!r} is not -1 or an earlier branch")
        branches.append(op_from_name(params[op_param(i)]).with_input(source))
    spec = CellSpec(tuple(branches))
    space.validate(spec)
    return spec


def suggest_spec(trial, space: SearchSpace) -> CellSpec:
    """Asks ``trial`` (an ``optuna.Trial``) for every parameter of ``space``, in order, and returns
    the cell. Fixed parameters (enqueued trials) and the sampler's proposals both come through here."""
    params = {
        name: trial.suggest_categorical(name, dist.choices) for name, dist in distributions(space).items()
    }
    return params_to_spec(params, space)


def published_cell() -> CellSpec:
    """DeepLab's published Cityscapes cell (``dense_prediction_cell_branch5_top1_cityscapes.json``),
    read from the copy shipped inside the package."""
    text = importlib.resources.files("deeplab_dpc.nas").joinpath("specs", PUBLISHED_SPEC).read_text("utf-8")
    return CellSpec.from_json(text)


def aspp_cell() -> CellSpec:
    """DeepLab v3's ASPP as a cell of the space: a 1x1 conv, 3x3 separable convs at rates 6, 12 and
    18, and image-level pooling (grid 1x1), all reading the backbone."""
    return CellSpec(
        (
            Branch(CONV, kernel=(1, 1)),
            Branch(CONV, kernel=(3, 3), rate=(6, 6)),
            Branch(CONV, kernel=(3, 3), rate=(12, 12)),
            Branch(CONV, kernel=(3, 3), rate=(18, 18)),
            Branch(PYRAMID_POOLING, grid_size=(1, 1)),
        )
    )


def reference_cells() -> dict[str, CellSpec]:
    """The cells ``--enqueue_published`` runs first, by name."""
    return {"published_cityscapes": published_cell(), "aspp": aspp_cell()}
