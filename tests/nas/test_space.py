"""The search space as Optuna parameters: readable names, round trips, the reference cells."""

import json
import pathlib
import random

import optuna
import pytest

from deeplab_dpc.core.spec import Branch, CellSpec, SearchSpace, SpecError
from deeplab_dpc.nas import space as space_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_operation_has_a_readable_name_that_round_trips():
    ops = SearchSpace().operations()
    names = [space_lib.op_name(op) for op in ops]
    assert len(set(names)) == 81
    assert names[0] == "conv1x1"
    assert "sep3x3_r6x18" in names and "pool_4x2" in names
    assert [space_lib.op_from_name(n) for n in names] == list(ops)


@pytest.mark.parametrize("bad", ["conv3x3", "sep3x3_r6", "pool_4", "sep5x5_r1x1", ""])
def test_unknown_operation_names_are_errors(bad):
    with pytest.raises(SpecError, match="unknown operation name"):
        space_lib.op_from_name(bad)


def test_distributions_follow_the_papers_space():
    dists = space_lib.distributions(SearchSpace(num_branches=5))
    assert list(dists) == [f"b{i}_{kind}" for i in range(5) for kind in ("input", "op")]
    for i in range(5):
        assert dists[f"b{i}_input"].choices == tuple(range(-1, i))
        assert len(dists[f"b{i}_op"].choices) == 81


def test_params_round_trip_for_sampled_cells():
    space = SearchSpace(num_branches=5)
    rng = random.Random(0)
    for _ in range(200):
        spec = space.sample(rng)
        params = space_lib.spec_to_params(spec)
        assert space_lib.params_to_spec(params, space) == spec


def test_params_outside_the_space_name_the_parameter():
    space = SearchSpace(num_branches=2)
    good = {"b0_input": -1, "b0_op": "conv1x1", "b1_input": 0, "b1_op": "pool_1x1"}
    with pytest.raises(SpecError, match="'b1_input'"):
        space_lib.params_to_spec({**good, "b1_input": 1}, space)
    with pytest.raises(SpecError, match="'b1_op' missing"):
        space_lib.params_to_spec({k: v for k, v in good.items() if k != "b1_op"}, space)
    with pytest.raises(SpecError, match="rate"):
        space_lib.params_to_spec({**good, "b0_op": "sep3x3_r2x2"}, space)  # 2 is not a rate of the space


def test_suggest_spec_takes_fixed_params_from_an_enqueued_trial():
    space = SearchSpace()
    spec = space_lib.published_cell()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(space_lib.spec_to_params(spec))
    trial = study.ask()
    assert space_lib.suggest_spec(trial, space) == spec
    # The dashboard sees readable choices.
    assert trial.params["b1_op"] == "sep3x3_r18x15" and trial.params["b2_input"] == 1


def test_packaged_published_cell_is_the_experiments_file():
    shipped = CellSpec.load(REPO / "experiments" / "specs" / space_lib.PUBLISHED_SPEC, space=SearchSpace())
    assert space_lib.published_cell() == shipped
    assert json.loads(space_lib.published_cell().to_json()) == json.loads(shipped.to_json())


def test_aspp_cell_is_deeplab_v3s_aspp_in_the_space():
    spec = space_lib.aspp_cell()
    SearchSpace().validate(spec)
    assert all(b.input == -1 for b in spec.branches)
    assert [space_lib.op_name(b) for b in spec.branches] == [
        "conv1x1",
        "sep3x3_r6x6",
        "sep3x3_r12x12",
        "sep3x3_r18x18",
        "pool_1x1",
    ]
    assert spec.branches[-1] == Branch("pyramid_pooling", grid_size=(1, 1))
    assert not spec.same_graph(space_lib.published_cell())
