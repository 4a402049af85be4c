"""Cell spec: DeepLab's JSON format, validation errors, the search space."""

import json
import math
import pathlib
import random

import pytest

from deeplab_dpc.core.spec import Branch, CellSpec, SearchSpace, SpecError

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json"

# DeepLab's core/dense_prediction_cell_branch5_top1_cityscapes.json, as DeepLab ships it.
DEEPLAB_TEXT = (
    '[{"kernel": 3, "rate": [1, 6], "op": "conv", "input": -1}, '
    '{"kernel": 3, "rate": [18, 15], "op": "conv", "input": 0}, '
    '{"kernel": 3, "rate": [6, 3], "op": "conv", "input": 1}, '
    '{"kernel": 3, "rate": [1, 1], "op": "conv", "input": 0}, '
    '{"kernel": 3, "rate": [6, 21], "op": "conv", "input": 0}]'
)


def test_published_cell_reads_with_the_paper_structure():
    spec = CellSpec.load(PUBLISHED, space=SearchSpace())
    assert [b.input for b in spec.branches] == [-1, 0, 1, 0, 0]
    assert [b.rate for b in spec.branches] == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
    assert all(b.op == "conv" and b.kernel == (3, 3) for b in spec.branches)


def test_published_file_is_deeplabs_cell():
    assert json.loads(PUBLISHED.read_text()) == json.loads(DEEPLAB_TEXT)


def test_round_trip_is_equal_in_meaning(tmp_path):
    spec = CellSpec.from_json(DEEPLAB_TEXT)
    written = json.loads(spec.to_json())
    # Same dicts as DeepLab's file (key order aside): DeepLab reads ours unchanged.
    assert written == json.loads(DEEPLAB_TEXT)
    spec.save(tmp_path / "cell.json")
    assert CellSpec.load(tmp_path / "cell.json") == spec
    assert not list(tmp_path.glob("*.tmp-*"))


def test_all_op_forms_round_trip():
    data = [
        {"op": "conv", "input": -1, "kernel": 1},
        {"op": "pyramid_pooling", "input": 0, "grid_size": [2, 4]},
        {"op": "conv", "input": 1, "kernel": [3, 3], "rate": [3, 21]},
        {"op": "conv", "input": -1, "kernel": [1, 1], "rate": [1, 1]},
    ]
    spec = CellSpec.from_list(data)
    assert spec.branches[1] == Branch("pyramid_pooling", 0, grid_size=(2, 4))
    assert spec.branches[2].kernel == (3, 3)
    # A 1x1 conv's [1, 1] rate means nothing and is dropped; [3, 3] kernels are written as 3.
    assert spec.to_list()[3] == {"op": "conv", "input": -1, "kernel": 1}
    assert spec.to_list()[2]["kernel"] == 3
    assert CellSpec.from_list(spec.to_list()) == spec


BAD = [
    ({"op": "deconv", "input": -1}, 0, "op", "unknown op"),
    ({"input": -1, "kernel": 1}, 0, "op", "missing"),
    ({"op": "conv", "kernel": 1}, 0, "input", "missing"),
    ({"op": "conv", "input": 0, "kernel": 1}, 0, "input", "branch 0 has no earlier branch"),
    ({"op": "conv", "input": -2, "kernel": 1}, 0, "input", "must be -1"),
    ({"op": "conv", "input": "-1", "kernel": 1}, 0, "input", "expected an integer"),
    ({"op": "conv", "input": -1}, 0, "kernel", "missing"),
    ({"op": "conv", "input": -1, "kernel": 3}, 0, "rate", "missing"),
    ({"op": "conv", "input": -1, "kernel": 3, "rate": [0, 1]}, 0, "rate", "positive"),
    ({"op": "conv", "input": -1, "kernel": 3, "rate": [1, 2, 3]}, 0, "rate", "two integers"),
    ({"op": "conv", "input": -1, "kernel": 3, "rate": [1.5, 2]}, 0, "rate", "two integers"),
    ({"op": "conv", "input": -1, "kernel": True}, 0, "kernel", "integer"),
    ({"op": "conv", "input": -1, "kernel": 1, "grid_size": [1, 1]}, 0, "grid_size", "unknown key"),
    ({"op": "pyramid_pooling", "input": -1}, 0, "grid_size", "missing"),
    ({"op": "pyramid_pooling", "input": -1, "grid_size": [1, 1], "rate": [1, 1]}, 0, "rate", "unknown key"),
    ({"op": "conv", "input": -1, "kernel": 1, "strides": 2}, 0, "strides", "unknown key"),
]


@pytest.mark.parametrize("branch,index,field,message", BAD)
def test_validation_errors_name_branch_and_field(branch, index, field, message):
    with pytest.raises(SpecError) as e:
        CellSpec.from_list([branch])
    text = str(e.value)
    assert f"branch {index}" in text and f"'{field}'" in text and message in text


def test_forward_input_names_the_branch():
    data = [{"op": "conv", "input": -1, "kernel": 1}, {"op": "conv", "input": 1, "kernel": 1}]
    with pytest.raises(SpecError, match=r"branch 1, field 'input': 1 must be -1 \(the backbone\) or an earlier branch \(0..0\)"):
        CellSpec.from_list(data)


def test_structural_errors():
    with pytest.raises(SpecError, match="JSON list"):
        CellSpec.from_list({"op": "conv"})
    with pytest.raises(SpecError, match="at least one branch"):
        CellSpec.from_list([])
    with pytest.raises(SpecError, match="branch 0: expected a JSON object"):
        CellSpec.from_list(["conv"])
    with pytest.raises(SpecError, match="not valid JSON"):
        CellSpec.from_json("[{")


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"op": "conv", "input": -1, "kernel": 3}]')
    with pytest.raises(SpecError, match=r"bad\.json: branch 0, field 'rate': missing"):
        CellSpec.load(path)
    with pytest.raises(SpecError, match=r"missing\.json: cannot read"):
        CellSpec.load(tmp_path / "missing.json")


def test_strict_mode_rejects_values_outside_the_space_that_lenient_accepts():
    space = SearchSpace()
    cases = [
        ({"op": "conv", "input": -1, "kernel": 3, "rate": [2, 6]}, "rate"),
        ({"op": "conv", "input": -1, "kernel": 5, "rate": [1, 1]}, "kernel"),
        ({"op": "pyramid_pooling", "input": -1, "grid_size": [3, 1]}, "grid_size"),
        ({"op": "conv", "input": -1, "kernel": 1, "rate": [3, 3]}, "rate"),
    ]
    filler = [{"op": "conv", "input": -1, "kernel": 1}] * 4
    for branch, field in cases:
        data = filler[:2] + [branch] + filler[2:]
        CellSpec.from_list(data)  # lenient: fine
        with pytest.raises(SpecError, match=f"branch 2, field '{field}': .*outside the space|branch 2, field '{field}'"):
            CellSpec.from_list(data, space=space)
    with pytest.raises(SpecError, match="5 branches, the cell has 4"):
        CellSpec.from_list(filler, space=space)


def test_space_size_is_derived():
    space = SearchSpace()
    assert space.num_operations() == 81 == len(space.operations()) == len(set(space.operations()))
    assert space.size() == math.factorial(5) * 81**5 == 418_414_128_120
    tiny = SearchSpace(num_branches=2, rates=(1, 3), grid_sizes=(1,))
    # 6 ops; branch 0 has 1 input, branch 1 has 2: 1*6 * 2*6 = 72 cells.
    assert tiny.num_operations() == 6
    cells = list(tiny.enumerate_cells())
    assert len(cells) == tiny.size() == 72 and len(set(cells)) == 72


def test_operations_cover_the_paper_space():
    keys = {op.op_key() for op in SearchSpace().operations()}
    assert "conv1x1" in keys and "sep3x3_r21x1" in keys and "pp8x2" in keys
    assert sum(k.startswith("sep") for k in keys) == 64 and sum(k.startswith("pp") for k in keys) == 16


def test_sampling_is_valid_seeded_and_uniform_over_inputs():
    space = SearchSpace()
    samples = [space.sample(random.Random(s)) for s in range(300)]
    for spec in samples:
        space.validate(spec)
    assert space.sample(7) == space.sample(7)
    assert len({s.canonical_hash() for s in samples}) == 300
    # Branch 4 reads one of 5 sources uniformly: every source appears.
    assert {s.branches[4].input for s in samples} == {-1, 0, 1, 2, 3}
    # Roughly 64/81 of branches are separable convs.
    sep = sum(b.is_separable for s in samples for b in s.branches) / (300 * 5)
    assert abs(sep - 64 / 81) < 0.05


def test_mutation_never_returns_the_same_graph():
    # Five 1x1 convs: moving branch 4 from branch 0 to branch 2 (both 1x1 convs
    # reading the backbone, with no children) is a new spec but the same graph;
    # seed 5 drew exactly that before mutations were redrawn.
    space = SearchSpace()
    data = [{"op": "conv", "input": -1, "kernel": 1}] * 4 + [{"op": "conv", "input": 0, "kernel": 1}]
    spec = CellSpec.from_list(data, space=space)
    for seed in range(200):
        child = space.mutate(spec, seed)
        space.validate(child)
        assert child.canonical_hash() != spec.canonical_hash(), seed
        assert not child.same_graph(spec)
        assert sum(a != b for a, b in zip(spec.branches, child.branches)) == 1


def test_mutation_with_no_other_graph_is_a_spec_error():
    class OneOperation(SearchSpace):
        def operations(self):
            return (Branch("conv", kernel=(1, 1)),)

    space = OneOperation(num_branches=1)
    spec = CellSpec.from_list([{"op": "conv", "input": -1, "kernel": 1}], space=space)
    with pytest.raises(SpecError, match="no other cell"):
        space.mutate(spec, 0)
    # With two branches the second one can read the first: another graph exists.
    two = OneOperation(num_branches=2)
    chain = two.mutate(CellSpec.from_list([{"op": "conv", "input": -1, "kernel": 1}] * 2), 0)
    assert [b.input for b in chain.branches] == [-1, 0]


BAD_BRANCHES = [
    (dict(op="deconv", kernel=(1, 1)), "op", "unknown op"),
    (dict(op=None), "op", "unknown op"),
    (dict(op="conv", input=-2, kernel=(1, 1)), "input", "-1 (the backbone)"),
    (dict(op="conv", input="0", kernel=(1, 1)), "input", "-1 (the backbone)"),
    (dict(op="conv", input=True, kernel=(1, 1)), "input", "-1 (the backbone)"),
    (dict(op="conv"), "kernel", "missing"),
    (dict(op="conv", kernel=(3, 3)), "rate", "missing"),
    (dict(op="conv", kernel=(0, 3), rate=(1, 1)), "kernel", "positive"),
    (dict(op="conv", kernel=(3, 3), rate=(1, 2, 3)), "rate", "two integers"),
    (dict(op="conv", kernel=(3, 3), rate=6), "rate", "two integers"),
    (dict(op="conv", kernel=(3, 3), rate=(1.0, 6)), "rate", "two integers"),
    (dict(op="conv", kernel=(1, 1), grid_size=(1, 1)), "grid_size", "not a field"),
    (dict(op="pyramid_pooling"), "grid_size", "missing"),
    (dict(op="pyramid_pooling", grid_size=2), "grid_size", "two integers"),
    (dict(op="pyramid_pooling", grid_size=(2, 2), kernel=(1, 1)), "kernel", "not a field"),
    (dict(op="pyramid_pooling", grid_size=(2, 2), rate=(1, 1)), "rate", "not a field"),
]


@pytest.mark.parametrize("fields,field,message", BAD_BRANCHES)
def test_branch_built_directly_validates_as_spec_error(fields, field, message):
    with pytest.raises(SpecError) as e:
        Branch(**fields)
    assert f"field '{field}'" in str(e.value) and message in str(e.value)


def test_branch_built_directly_normalises_like_the_parser():
    # Lists become tuples (hashable, equal to parsed branches); a scalar kernel is square.
    direct = Branch("conv", 0, kernel=[3, 3], rate=[1, 6])
    assert direct == Branch("conv", 0, kernel=3, rate=(1, 6))
    parsed = CellSpec.from_list([{"op": "conv", "input": -1, "kernel": 1}, direct.to_dict()])
    assert direct == parsed.branches[1]
    assert hash(direct) == hash(Branch("conv", 0, kernel=(3, 3), rate=(1, 6)))
    assert direct.op_key() == "sep3x3_r1x6"
    assert Branch("pyramid_pooling", grid_size=[2, 4]).grid_size == (2, 4)
    assert Branch("conv", kernel=1, rate=(1, 1)) == Branch("conv", kernel=(1, 1))


def test_a_1x1_conv_rate_canonicalises_away():
    # DeepLab applies no rate to a 1x1 conv and the hash ignores it, so the
    # canonical forms must be equal too (they were not when the rate was kept).
    with_rate = CellSpec.from_list(
        [
            {"op": "conv", "input": -1, "kernel": 3, "rate": [1, 6]},
            {"op": "conv", "input": 0, "kernel": 1, "rate": [3, 3]},
        ]
    )
    without = CellSpec.from_list(
        [
            {"op": "conv", "input": -1, "kernel": 3, "rate": [1, 6]},
            {"op": "conv", "input": 0, "kernel": 1},
        ]
    )
    assert with_rate != without  # the specs as written differ ...
    assert with_rate.canonical_hash() == without.canonical_hash()  # ... the graph does not
    assert with_rate.canonical() == without.canonical()
    assert with_rate.canonical().to_list()[1] == {"op": "conv", "input": 0, "kernel": 1}
    # Strict mode still sees the written rate, which the space does not allow.
    with pytest.raises(SpecError, match="branch 1, field 'rate'"):
        SearchSpace(num_branches=2).validate(with_rate)


def test_mutation_changes_exactly_one_branch():
    space = SearchSpace()
    rng = random.Random(3)
    spec = space.sample(rng)
    seen_input, seen_op = False, False
    for _ in range(200):
        child = space.mutate(spec, rng)
        space.validate(child)
        assert not child.same_graph(spec)
        diff = [i for i, (a, b) in enumerate(zip(spec.branches, child.branches)) if a != b]
        assert len(diff) == 1
        a, b = spec.branches[diff[0]], child.branches[diff[0]]
        if a.input != b.input:
            seen_input = True
            assert a.with_input(-1) == b.with_input(-1)
        else:
            seen_op = True
        if diff[0] == 0:
            assert b.input == -1
    assert seen_input and seen_op


def test_canonical_hash_identifies_the_same_graph():
    published = CellSpec.from_json(DEEPLAB_TEXT)
    # Reorder: branches 3 and 4 (children of 0) swapped, and 1 -> 2 chain moved after them.
    reordered = CellSpec.from_list(
        [
            {"op": "conv", "input": -1, "kernel": 3, "rate": [1, 6]},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [6, 21]},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [1, 1]},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [18, 15]},
            {"op": "conv", "input": 3, "kernel": 3, "rate": [6, 3]},
        ]
    )
    assert reordered != published
    assert reordered.canonical_hash() == published.canonical_hash()
    assert reordered.canonical() == published.canonical()
    # Same multiset of ops and root paths, different tree: must differ.
    a = CellSpec.from_list(
        [
            {"op": "conv", "input": -1, "kernel": 1},
            {"op": "conv", "input": -1, "kernel": 1},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [3, 3]},
            {"op": "conv", "input": 1, "kernel": 3, "rate": [3, 3]},
        ]
    )
    b = CellSpec.from_list(
        [
            {"op": "conv", "input": -1, "kernel": 1},
            {"op": "conv", "input": -1, "kernel": 1},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [3, 3]},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [3, 3]},
        ]
    )
    assert a.canonical_hash() != b.canonical_hash()
    # Rates are ordered (rh, rw): (1, 6) is not (6, 1).
    flipped = CellSpec.from_list([{"op": "conv", "input": -1, "kernel": 3, "rate": [6, 1]}])
    plain = CellSpec.from_list([{"op": "conv", "input": -1, "kernel": 3, "rate": [1, 6]}])
    assert flipped.canonical_hash() != plain.canonical_hash()


def test_canonical_form_is_a_valid_reordering():
    space = SearchSpace()
    for seed in range(50):
        spec = space.sample(seed)
        canon = spec.canonical()
        space.validate(canon)
        assert canon.canonical() == canon
        assert canon.canonical_hash() == spec.canonical_hash()
        assert sorted(b.op_key() for b in canon.branches) == sorted(b.op_key() for b in spec.branches)
