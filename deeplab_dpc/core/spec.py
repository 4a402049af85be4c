"""The Dense Prediction Cell spec, in DeepLab's JSON format, and its search space.

A cell is a list of branches. Each branch reads either the backbone features
(``"input": -1``) or the output of an earlier branch (``"input": i``) and
applies one operation:

* ``{"op": "conv", "kernel": 1}``: 1x1 conv;
* ``{"op": "conv", "kernel": 3, "rate": [rh, rw]}``: 3x3 atrous separable conv;
* ``{"op": "pyramid_pooling", "grid_size": [gh, gw]}``: average pooling to a
  gh x gw grid, 1x1 conv, bilinear resize back.

This is exactly the format of DeepLab's
``core/dense_prediction_cell_branch5_top1_cityscapes.json``: such a file loads
unchanged, and ``CellSpec.to_json`` writes files DeepLab reads.

Two validation modes:

* lenient (``CellSpec.from_list(data)``): any positive kernel, rate and grid,
  for hand-written cells;
* strict (``spec.validate_in(space)`` / ``from_list(data, space=space)``):
  the branch count, kernels, rates and grids of a ``SearchSpace``.

Every error is a ``SpecError`` naming the branch index and the field.

Example:

>>> spec = CellSpec.from_json('[{"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1}]')
>>> spec.branches[0].rate
(1, 6)
>>> SearchSpace(num_branches=2).size()
13122
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from typing import Any, Iterable, Sequence

from deeplab_dpc.fileio import write_bytes_atomically

CONV = "conv"
PYRAMID_POOLING = "pyramid_pooling"
OPS = (CONV, PYRAMID_POOLING)
BACKBONE_INPUT = -1
# Redraws allowed for SearchSpace.mutate to find a different graph. A draw
# changes the graph with probability >= 1/2 in any space (a new op always
# does), so 100 failing draws mean there is no other graph to reach.
MUTATION_DRAWS = 100

# Keys each op accepts; "rate" is optional for a 1x1 conv (DeepLab ignores it).
_FIELDS = {
    CONV: {"op", "input", "kernel", "rate"},
    PYRAMID_POOLING: {"op", "input", "grid_size"},
}
# Order of keys when writing; DeepLab's reader does not care.
_KEY_ORDER = ("op", "input", "kernel", "rate", "grid_size")


class SpecError(ValueError):
    """A cell spec that is malformed or outside the search space."""


def _where(index: int | None, field: str | None) -> str:
    parts = []
    if index is not None:
        parts.append(f"branch {index}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)


def _fail(index: int | None, field: str | None, message: str) -> SpecError:
    where = _where(index, field)
    return SpecError(f"{where}: {message}" if where else message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: Any, index: int | None, field: str, allow_scalar: bool) -> tuple[int, int]:
    """Parses ``k`` (if allowed) or ``[a, b]`` into a tuple of positive ints."""
    if allow_scalar and _is_int(value):
        value = [value, value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_int(v) for v in value)
    ):
        expected = "an integer or a list of two integers" if allow_scalar else "a list of two integers"
        raise _fail(index, field, f"expected {expected}, got {value!r}")
    if min(value) < 1:
        raise _fail(index, field, f"values must be positive, got {list(value)}")
    return (int(value[0]), int(value[1]))


@dataclasses.dataclass(frozen=True)
class Branch:
    """One branch of a cell: an operation applied to an input.

    Args:
        op: "conv" or "pyramid_pooling".
        input: -1 for the backbone features, i for the output of branch i.
        kernel: (kh, kw) for "conv": (1, 1) is a 1x1 conv, anything larger a
            separable conv. None for pyramid pooling.
        rate: (rh, rw) atrous rate of a separable conv; None for a 1x1 conv
            (DeepLab ignores it there) and for pyramid pooling.
        grid_size: (gh, gw) pooling grid for "pyramid_pooling"; None for conv.
    """

    op: str
    input: int = BACKBONE_INPUT
    kernel: tuple[int, int] | None = None
    rate: tuple[int, int] | None = None
    grid_size: tuple[int, int] | None = None

    def __post_init__(self):
        # Built directly (not through ``from_dict``) a branch gets the same
        # checks, as SpecError naming the field; pairs become tuples.
        if not isinstance(self.op, str) or self.op not in OPS:
            raise _fail(None, "op", f"unknown op {self.op!r}; valid ops: {list(OPS)}")
        if not _is_int(self.input) or self.input < BACKBONE_INPUT:
            raise _fail(
                None, "input", f"expected -1 (the backbone) or a branch index >= 0, got {self.input!r}"
            )
        if self.op == PYRAMID_POOLING:
            for field in ("kernel", "rate"):
                if getattr(self, field) is not None:
                    raise _fail(None, field, f"not a field of op {self.op!r}")
            if self.grid_size is None:
                raise _fail(None, "grid_size", "missing")
            grid = _pair(self.grid_size, None, "grid_size", allow_scalar=False)
            object.__setattr__(self, "grid_size", grid)
            return
        if self.grid_size is not None:
            raise _fail(None, "grid_size", f"not a field of op {self.op!r}")
        if self.kernel is None:
            raise _fail(None, "kernel", "missing")
        kernel = _pair(self.kernel, None, "kernel", allow_scalar=True)
        rate = None if self.rate is None else _pair(self.rate, None, "rate", allow_scalar=False)
        if kernel != (1, 1) and rate is None:
            raise _fail(None, "rate", "missing (required for a separable conv)")
        if kernel == (1, 1) and rate == (1, 1):
            rate = None  # A 1x1 conv's rate means nothing: canonicalise it away.
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "rate", rate)

    @property
    def is_separable(self) -> bool:
        return self.op == CONV and self.kernel != (1, 1)

    def with_input(self, index: int) -> "Branch":
        return dataclasses.replace(self, input=index)

    def canonical(self) -> "Branch":
        """The branch without fields its op ignores: a 1x1 conv's rate.

        DeepLab applies no rate to a 1x1 conv, and ``op_key`` (hence the
        canonical hash) leaves it out, so the canonical form drops it too.
        """
        if self.op == CONV and self.kernel == (1, 1) and self.rate is not None:
            return dataclasses.replace(self, rate=None)
        return self

    def op_key(self) -> str:
        """A short, canonical name of the operation, independent of the input."""
        if self.op == PYRAMID_POOLING:
            return "pp%dx%d" % self.grid_size
        if self.kernel == (1, 1):
            return "conv1x1"
        return "sep%dx%d_r%dx%d" % (self.kernel + self.rate)

    def to_dict(self) -> dict:
        """The branch in DeepLab's JSON form (square kernels as one integer)."""
        out: dict[str, Any] = {"op": self.op, "input": self.input}
        if self.op == CONV:
            kh, kw = self.kernel
            out["kernel"] = kh if kh == kw else [kh, kw]
            if self.rate is not None:
                out["rate"] = list(self.rate)
        else:
            out["grid_size"] = list(self.grid_size)
        return {k: out[k] for k in _KEY_ORDER if k in out}

    @classmethod
    def from_dict(cls, data: Any, index: int) -> "Branch":
        """Parses one branch; ``index`` is its position, used in errors only.

        Checks structure and lenient values (positive integers, input pointing
        to the backbone or an earlier branch). Search-space membership is
        checked by ``SearchSpace.validate``.
        """
        if not isinstance(data, dict):
            raise _fail(index, None, f"expected a JSON object, got {type(data).__name__}")
        if "op" not in data:
            raise _fail(index, "op", "missing")
        op = data["op"]
        if op not in OPS:
            raise _fail(index, "op", f"unknown op {op!r}; valid ops: {list(OPS)}")
        unknown = sorted(set(data) - _FIELDS[op])
        if unknown:
            raise _fail(
                index, unknown[0], f"unknown key for op {op!r}; valid keys: {sorted(_FIELDS[op])}"
            )
        if "input" not in data:
            raise _fail(index, "input", "missing")
        source = data["input"]
        if not _is_int(source):
            raise _fail(index, "input", f"expected an integer, got {source!r}")
        if source != BACKBONE_INPUT and not 0 <= source < index:
            raise _fail(
                index,
                "input",
                f"{source} must be -1 (the backbone) or an earlier branch (0..{index - 1})"
                if index
                else f"{source} must be -1 (the backbone): branch 0 has no earlier branch",
            )
        if op == PYRAMID_POOLING:
            if "grid_size" not in data:
                raise _fail(index, "grid_size", "missing")
            grid = _pair(data["grid_size"], index, "grid_size", allow_scalar=False)
            return cls(op=op, input=source, grid_size=grid)
        if "kernel" not in data:
            raise _fail(index, "kernel", "missing")
        kernel = _pair(data["kernel"], index, "kernel", allow_scalar=True)
        rate = None
        if "rate" in data:
            rate = _pair(data["rate"], index, "rate", allow_scalar=False)
        if kernel != (1, 1) and rate is None:
            raise _fail(index, "rate", "missing (required for a separable conv)")
        return cls(op=op, input=source, kernel=kernel, rate=rate)


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """A Dense Prediction Cell: a tuple of branches, concatenated and projected.

    Args:
        branches: the branches in order; branch i may read branch j < i.

    Example:
        >>> spec = CellSpec.load("experiments/specs/dpc_cityscapes_top1.json")
        >>> len(spec.branches)
        5
    """

    branches: tuple[Branch, ...]

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        if not self.branches:
            raise SpecError("a cell needs at least one branch")
        for i, branch in enumerate(self.branches):
            if not isinstance(branch, Branch):
                raise _fail(i, None, f"expected a Branch, got {type(branch).__name__}")
            if branch.input != BACKBONE_INPUT and not 0 <= branch.input < i:
                raise _fail(i, "input", f"{branch.input} must be -1 or an earlier branch")

    # ----------------------------------------------------------------- I/O
    @classmethod
    def from_list(cls, data: Any, space: "SearchSpace | None" = None) -> "CellSpec":
        """Parses DeepLab's JSON structure (a list of branch dicts).

        Args:
            data: the decoded JSON value.
            space: if given, also require membership of this search space
                (strict mode).
        """
        if not isinstance(data, list):
            raise SpecError(f"a cell spec is a JSON list of branches, got {type(data).__name__}")
        if not data:
            raise SpecError("a cell spec needs at least one branch")
        spec = cls(tuple(Branch.from_dict(item, i) for i, item in enumerate(data)))
        if space is not None:
            space.validate(spec)
        return spec

    @classmethod
    def from_json(cls, text: str, space: "SearchSpace | None" = None) -> "CellSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"not valid JSON: {e}") from None
        return cls.from_list(data, space)

    @classmethod
    def load(cls, path: str | os.PathLike, space: "SearchSpace | None" = None) -> "CellSpec":
        """Reads a spec file; errors name the file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SpecError(f"{path}: cannot read cell spec: {e.strerror}") from None
        try:
            return cls.from_json(text, space)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None

    def to_list(self) -> list[dict]:
        return [b.to_dict() for b in self.branches]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_list(), indent=indent)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the spec atomically (temporary file, then rename)."""
        write_bytes_atomically(path, (self.to_json(indent=1) + "\n").encode("utf-8"))

    # ------------------------------------------------------- graph identity
    def _children(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {BACKBONE_INPUT: []}
        for i, branch in enumerate(self.branches):
            children.setdefault(i, [])
            children[branch.input].append(i)
        return children

    def _subtree_codes(self) -> dict[int, str]:
        """AHU encoding of every node of the branch tree rooted at the backbone."""
        children = self._children()
        codes: dict[int, str] = {}
        for node in reversed(range(-1, len(self.branches))):  # children before parents
            label = "x" if node == BACKBONE_INPUT else self.branches[node].op_key()
            codes[node] = label + "(" + ",".join(sorted(codes[c] for c in children[node])) + ")"
        return codes

    def canonical(self) -> "CellSpec":
        """The same graph with branches in a canonical order.

        Every branch has exactly one input, so a cell is a tree rooted at the
        backbone; the concat treats branches as a set. Fields an op ignores
        (a 1x1 conv's rate) are dropped. Two specs describe the same graph iff
        their canonical forms are equal.
        """
        codes = self._subtree_codes()
        children = self._children()
        order: list[int] = []

        def visit(node: int) -> None:
            for child in sorted(children[node], key=lambda c: (codes[c], c)):
                order.append(child)
                visit(child)

        visit(BACKBONE_INPUT)
        new_index = {old: new for new, old in enumerate(order)}
        new_index[BACKBONE_INPUT] = BACKBONE_INPUT
        return CellSpec(
            tuple(
                self.branches[old].canonical().with_input(new_index[self.branches[old].input])
                for old in order
            )
        )

    def canonical_hash(self) -> str:
        """A hex digest equal for specs that describe the same graph."""
        root = self._subtree_codes()[BACKBONE_INPUT]
        return hashlib.sha256(root.encode()).hexdigest()[:16]

    def same_graph(self, other: "CellSpec") -> bool:
        return self.canonical_hash() == other.canonical_hash()


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The paper's DPC search space (Chen et al. 2018, section 3.2).

    B branches; branch i chooses its input among the backbone and branches
    0..i-1, and one operation among: 1x1 conv, 3x3 atrous separable conv with
    rates (rh, rw) in ``rates`` x ``rates``, average spatial pyramid pooling
    with grid (gh, gw) in ``grid_sizes`` x ``grid_sizes``. With the defaults
    there are 1 + 64 + 16 = 81 operations and 5! x 81^5 cells.

    Args:
        num_branches: B.
        rates: the atrous rates per axis.
        grid_sizes: the pyramid pooling grid sizes per axis.

    Example:
        >>> space = SearchSpace()
        >>> spec = space.sample(random.Random(0))
        >>> space.validate(spec)
    """

    num_branches: int = 5
    rates: tuple[int, ...] = (1, 3, 6, 9, 12, 15, 18, 21)
    grid_sizes: tuple[int, ...] = (1, 2, 4, 8)

    def __post_init__(self):
        if not _is_int(self.num_branches) or self.num_branches < 1:
            raise ValueError(f"num_branches must be a positive integer, got {self.num_branches!r}")
        for name in ("rates", "grid_sizes"):
            values = tuple(getattr(self, name))
            if not values or not all(_is_int(v) and v > 0 for v in values):
                raise ValueError(f"{name} must be positive integers, got {values!r}")
            object.__setattr__(self, name, values)

    def operations(self) -> tuple[Branch, ...]:
        """Every operation, as a branch reading the backbone."""
        ops = [Branch(CONV, kernel=(1, 1))]
        ops += [Branch(CONV, kernel=(3, 3), rate=(rh, rw)) for rh in self.rates for rw in self.rates]
        ops += [Branch(PYRAMID_POOLING, grid_size=(gh, gw)) for gh in self.grid_sizes for gw in self.grid_sizes]
        return tuple(ops)

    def num_operations(self) -> int:
        return 1 + len(self.rates) ** 2 + len(self.grid_sizes) ** 2

    def size(self) -> int:
        """Number of cells: branch i has i + 1 inputs, so B! x ops^B."""
        return math.factorial(self.num_branches) * self.num_operations() ** self.num_branches

    def validate(self, spec: CellSpec) -> None:
        """Raises ``SpecError`` (branch index and field) if ``spec`` is outside the space."""
        if len(spec.branches) != self.num_branches:
            raise SpecError(
                f"the search space has {self.num_branches} branches, the cell has {len(spec.branches)}"
            )
        for i, b in enumerate(spec.branches):
            if b.op == PYRAMID_POOLING:
                bad = [g for g in b.grid_size if g not in self.grid_sizes]
                if bad:
                    raise _fail(i, "grid_size", f"{list(b.grid_size)} outside the space {list(self.grid_sizes)}")
            elif b.kernel == (1, 1):
                if b.rate is not None:
                    raise _fail(i, "rate", f"{list(b.rate)}: a 1x1 conv takes no rate in the search space")
            elif b.kernel != (3, 3):
                raise _fail(i, "kernel", f"{list(b.kernel)} outside the space (1 or 3)")
            else:
                bad = [r for r in b.rate if r not in self.rates]
                if bad:
                    raise _fail(i, "rate", f"{list(b.rate)} outside the space {list(self.rates)}")

    def contains(self, spec: CellSpec) -> bool:
        try:
            self.validate(spec)
        except SpecError:
            return False
        return True

    def sample(self, rng: random.Random | int | None = None) -> CellSpec:
        """A cell drawn uniformly from the space (every spec equally likely).

        Args:
            rng: a ``random.Random`` or an integer seed.
        """
        rng = _as_rng(rng)
        ops = self.operations()
        return CellSpec(
            tuple(rng.choice(ops).with_input(rng.randrange(-1, i)) for i in range(self.num_branches))
        )

    def mutate(self, spec: CellSpec, rng: random.Random | int | None = None) -> CellSpec:
        """Changes one branch's operation or input so that the graph changes.

        Branch 0 can only read the backbone, so its mutation always changes the
        operation. A new input can leave the graph as it was (branch 4 moving
        from branch 0 to branch 1 when both are 1x1 convs reading the
        backbone), so draws whose canonical hash equals ``spec``'s are redrawn,
        up to ``MUTATION_DRAWS`` times. The result is in the space and
        describes a different graph.

        Raises:
            SpecError: if ``spec`` is outside the space, or no draw gave
                another graph (a space with no other cell one mutation away).
        """
        self.validate(spec)
        rng = _as_rng(rng)
        old = spec.canonical_hash()
        for _ in range(MUTATION_DRAWS):
            child = self._mutate_once(spec, rng)
            if child is not None and child.canonical_hash() != old:
                return child
        raise SpecError(
            f"no mutation in {MUTATION_DRAWS} draws gave a different graph: "
            "the search space has no other cell one branch away from this one"
        )

    def _mutate_once(self, spec: CellSpec, rng: random.Random) -> CellSpec | None:
        """One draw: a new input or a new op for one branch; None if there is no other value."""
        index = rng.randrange(self.num_branches)
        branch = spec.branches[index]
        if index > 0 and rng.random() < 0.5:
            choices = [j for j in range(-1, index) if j != branch.input]
            new = branch.with_input(rng.choice(choices))
        else:
            choices = [op for op in self.operations() if op != branch.with_input(BACKBONE_INPUT)]
            if not choices:
                return None
            new = rng.choice(choices).with_input(branch.input)
        branches = list(spec.branches)
        branches[index] = new
        return CellSpec(tuple(branches))

    def enumerate_cells(self) -> Iterable[CellSpec]:
        """Every cell, in a fixed order. Only practical for tiny spaces."""
        ops = self.operations()

        def rec(prefix: Sequence[Branch]):
            i = len(prefix)
            if i == self.num_branches:
                yield CellSpec(tuple(prefix))
                return
            for source in range(-1, i):
                for op in ops:
                    yield from rec([*prefix, op.with_input(source)])

        yield from rec([])


def _as_rng(rng: random.Random | int | None) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)
