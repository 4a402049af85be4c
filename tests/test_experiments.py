"""Every experiments/**/*.flags parses into its entry point's config and carries its header: training
flagfiles into a TrainConfig, search.flags into a SearchConfig, rerank.flags into a RerankConfig."""

import pathlib

import pytest
from absl import flags

from deeplab_dpc import train as train_main

REPO = pathlib.Path(__file__).resolve().parents[1]
ALL_FLAGFILES = sorted((REPO / "experiments").rglob("*.flags"))
SEARCH_FLAGFILES = [p for p in ALL_FLAGFILES if p.name == "search.flags"]
RERANK_FLAGFILES = [p for p in ALL_FLAGFILES if p.name == "rerank.flags"]
PROXY_FLAGFILES = [p for p in ALL_FLAGFILES if p.name == "search_proxy.flags"]
TRUTH_FLAGFILES = [p for p in ALL_FLAGFILES if p.name == "fidelity_truth.flags"]
FLAGFILES = [
    p for p in ALL_FLAGFILES if p not in SEARCH_FLAGFILES + RERANK_FLAGFILES + PROXY_FLAGFILES + TRUTH_FLAGFILES
]


def test_the_promised_flagfiles_exist():
    names = {str(p.relative_to(REPO / "experiments")) for p in ALL_FLAGFILES}
    assert {"camvid/mobilenet_v2_dpc.flags", "camvid/mobilenet_v2_aspp.flags", "camvid/xception_65_dpc.flags",
            "cityscapes/mobilenet_v2_dpc.flags", "camvid/search.flags", "cityscapes/search.flags"} <= names
    assert any(n.startswith("pascal_voc_seg/") for n in names)
    assert any(n.startswith("pascal_person_part/") for n in names)


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_flagfile_parses_into_a_train_config(path, tmp_path, monkeypatch):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    for key in ("Command:", "Sized for:", "Expected"):
        assert key in text, f"{path.name}: header lacks {key!r}"
    monkeypatch.chdir(REPO)  # spec paths in flagfiles are relative to the repository
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", f"--flagfile={path}", f"--dataset_dir={tmp_path}", f"--train_logdir={tmp_path / 'run'}",
        "--tf_initial_checkpoint="])
    config = train_main.config_from_flags(fv)
    assert config.train_crop_size[0] >= config.model.output_stride
    assert config.model.num_classes == config.data.descriptor.num_classes
    if "dpc" in path.stem:
        assert config.model.context == "dpc" and len(config.model.dense_prediction_cell.branches) == 5


def _header(path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


@pytest.mark.parametrize("path", SEARCH_FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_search_flagfile_parses_into_a_search_config(path, tmp_path):
    from deeplab_dpc import search as search_main

    header = _header(path)
    assert "Command:" in header and "easured" in header, f"{path.name}: header lacks the command or its runtime"
    fv = flags.FlagValues()
    search_main.define_flags(fv)
    fv(["search", f"--flagfile={path}", f"--cache_dir={tmp_path}", f"--search_dir={tmp_path / 'search'}"])
    config = search_main.config_from_flags(fv)
    assert config.enqueue_published and config.num_branches == 5 and config.max_trials >= 100
    assert config.proxy["cache_dir"] == str(tmp_path) and config.proxy["proxy_steps"] == fv.proxy_steps
    if "cityscapes" in str(path):  # the paper's proxy: 30K steps of batch 8 with 256 filters
        assert (config.proxy["proxy_steps"], config.proxy["batch_size"], config.proxy["proxy_filters"]) == (
            30000,
            8,
            256,
        )


@pytest.mark.parametrize("path", RERANK_FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_rerank_flagfile_parses_into_a_rerank_config(path, tmp_path):
    from deeplab_dpc import rerank as rerank_main
    from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir

    assert "Command:" in _header(path)
    search_dir = tmp_path / "search"
    prepare_search_dir(
        SearchConfig(search_dir=str(search_dir), objective="tests.nas.fakes:deterministic")
    )
    fv = flags.FlagValues()
    rerank_main.define_flags(fv)
    fv(["rerank", f"--flagfile={path}", f"--search_dir={search_dir}", f"--dataset_dir={tmp_path}"])
    config = rerank_main.config_from_flags(fv)
    assert config.train.model.context == "dpc" and config.top_k >= 1 and config.include_reference
    assert config.train.train_logdir == str(search_dir / "rerank")


@pytest.mark.parametrize("path", PROXY_FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_proxy_flagfile_is_the_search_flagfiles_proxy(path, tmp_path):
    """search_proxy.flags (proxy_train's flag names, for bench/fidelity.py) must stay the proxy that
    search.flags runs: the fidelity table scores what the search uses."""
    from deeplab_dpc import proxy_train
    from deeplab_dpc import search as search_main

    assert "python bench/fidelity.py" in _header(path)
    fv = flags.FlagValues()
    proxy_train.define_flags(fv)
    fv(["proxy_train", f"--flagfile={path}", f"--cache_dir={tmp_path}",
        f"--dense_prediction_cell_json={REPO / 'experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json'}"])
    _, proxy = proxy_train.config_from_flags(fv)
    search_fv = flags.FlagValues()
    search_main.define_flags(search_fv)
    search_fv(["search", f"--flagfile={path.parent / 'search.flags'}", f"--cache_dir={tmp_path}",
               f"--search_dir={tmp_path / 'search'}"])
    searched = search_main.config_from_flags(search_fv).proxy
    assert {k: v for k, v in proxy.to_dict().items() if k in searched} == searched


@pytest.mark.parametrize("path", TRUTH_FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_ground_truth_flagfile_is_rerank_flagfiles_protocol(path, tmp_path, monkeypatch):
    """fidelity_truth.flags (train's flags; each run gives the cell) and rerank.flags train alike: the
    re-ranking scores cells the way the ground truth the proxy was chosen by does."""
    from deeplab_dpc import rerank as rerank_main
    from deeplab_dpc.nas.ground_truth import protocol_of
    from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir

    assert "Command:" in _header(path) and "Expected" in _header(path)
    monkeypatch.chdir(REPO)
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", f"--flagfile={path}", f"--dataset_dir={tmp_path}", f"--train_logdir={tmp_path / 'run'}",
        "--dense_prediction_cell_json=experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json"])
    truth = train_main.config_from_flags(fv)
    assert truth.freeze_backbone
    search_dir = tmp_path / "search"
    prepare_search_dir(
        SearchConfig(search_dir=str(search_dir), objective="tests.nas.fakes:deterministic")
    )
    fv = flags.FlagValues()
    rerank_main.define_flags(fv)
    fv(["rerank", f"--flagfile={path.parent / 'rerank.flags'}", f"--search_dir={search_dir}",
        f"--dataset_dir={tmp_path}"])
    rerank = rerank_main.config_from_flags(fv).train
    assert protocol_of(rerank) == protocol_of(truth)
