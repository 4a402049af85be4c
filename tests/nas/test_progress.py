"""What a person sees: trial lines, the status line, TensorBoard's HParams records, best_proxy_cell.json."""

import io
import json
import os
import time

import pytest
from optuna.trial import TrialState, create_trial
import glob
import struct
import wsgiref.util

from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api_pb2, metadata

from deeplab_dpc.nas import progress
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir
from deeplab_dpc.nas.worker import run_worker


def finished(number, spec, value=None, state=TrialState.COMPLETE, **attrs):
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=space_lib.spec_to_params(spec),
        distributions=space_lib.distributions(SearchConfig(search_dir="/tmp/x").space),
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def test_trial_lines():
    spec = space_lib.published_cell()
    done = finished(12, spec, 0.4123, madds=2.1e8, seconds=31.2)
    assert progress.trial_line(done) == "trial 12 done: proxy mIoU 0.412, 0.21 GMAdds, 31 s"
    assert [progress.format_madds(m) for m in (2.1e8, 1e7, 2.43e6)] == ["0.21 GMAdds", "0.01 GMAdds", "2.4 MMAdds"]
    dup = finished(13, spec, 0.4123, madds=2.1e8, duplicate_of=12)
    assert (
        progress.trial_line(dup)
        == "trial 13 duplicate of trial 12: proxy mIoU 0.412, 0.21 GMAdds (not retrained)"
    )
    failed = finished(
        14, spec, state=TrialState.FAIL, error="TrialFailed: loss is NaN at step 30\ntraceback..."
    )
    assert progress.trial_line(failed) == "trial 14 failed: TrialFailed: loss is NaN at step 30"
    cut = finished(
        15,
        spec,
        state=TrialState.FAIL,
        interrupted="worker w died",
        error="interrupted (worker w died); retried as trial 18",
    )
    assert (
        progress.trial_line(cut) == "trial 15 interrupted: interrupted (worker w died); retried as trial 18"
    )
    assert progress.trial_line(finished(0, spec, 0.5, reference="aspp", seconds=600)).endswith(
        "10 min [aspp]"
    )


def test_hparams_records_read_back_with_tensorboard(tmp_path):
    space = SearchConfig(search_dir="/tmp/x").space
    logdir = str(tmp_path)
    progress.write_hparams_experiment(logdir, space)
    progress.write_hparams_experiment(logdir, space)  # once only
    trial = finished(3, space_lib.aspp_cell(), 0.43, params=2.5e6, madds=1.2e9, seconds=30.0)
    trial.datetime_start = trial.datetime_complete
    assert progress.write_hparams_trial(logdir, trial)
    assert not progress.write_hparams_trial(logdir, trial)

    experiment_values = values(logdir)
    assert [v.tag for v in experiment_values] == [metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(plugin_content(experiment_values[0]))
    assert [h.name for h in experiment.hparam_infos] == list(space_lib.distributions(space))
    assert len(experiment.hparam_infos[1].domain_discrete.values) == 81
    assert [m.name.tag for m in experiment.metric_infos] == [
        "proxy/miou",
        "proxy/params",
        "proxy/madds",
        "proxy/seconds",
    ]

    by_tag = {v.tag: v for v in values(os.path.join(logdir, "trial_00003"))}
    start = metadata.parse_session_start_info_plugin_data(
        plugin_content(by_tag[metadata.SESSION_START_INFO_TAG])
    )
    assert start.hparams["b1_op"].string_value == "sep3x3_r6x6"
    assert start.hparams["b4_input"].number_value == -1
    end = metadata.parse_session_end_info_plugin_data(plugin_content(by_tag[metadata.SESSION_END_INFO_TAG]))
    assert end.status == api_pb2.STATUS_SUCCESS
    assert by_tag["proxy/miou"].simple_value == pytest.approx(0.43, rel=1e-6)
    assert by_tag["proxy/madds"].simple_value == pytest.approx(1.2e9, rel=1e-6)


def values(logdir):
    """Every Summary.Value of the event files in ``logdir``, decoded with TensorBoard's own protobufs
    (the TFRecord framing is checked against TensorBoard's reader in tests/test_summaries.py)."""
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            out.extend(event.summary.value)
    return out


def plugin_content(value):
    assert value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    return value.metadata.plugin_data.content


def test_progress_reports_each_trial_once_and_saves_the_best_cell(tmp_path):
    config = SearchConfig(search_dir=str(tmp_path), max_trials=4)
    out = io.StringIO()
    report = progress.SearchProgress(config, stream=out)
    a = finished(0, space_lib.published_cell(), 0.40, seconds=10)
    b = finished(1, space_lib.aspp_cell(), 0.45, seconds=10)
    report.start = time.time() - 20
    report.update([a])
    report.update([a, b])
    text = out.getvalue()
    assert text.count("trial 0 done") == 1 and text.count("trial 1 done") == 1
    with open(tmp_path / "best_proxy_cell.json") as f:
        assert json.load(f) == space_lib.aspp_cell().to_list()
    status = report.status([a, b])
    assert status.startswith("[2/4 trials: 2 done, 0 failed, 0 running")
    assert "best 0.450 (trial 1)" in status and "ETA 20 s" in status  # 2 left at 10 s each


def test_dashboard_reads_the_study(tmp_path):
    """optuna-dashboard's server, called as a WSGI app, lists the study and its readable params."""
    import optuna_dashboard

    config = SearchConfig(
        search_dir=str(tmp_path), objective="tests.nas.fakes:deterministic", max_trials=2
    )
    prepare_search_dir(config)
    study_lib.load_study(config, create=True)
    run_worker(config, "w")
    app = optuna_dashboard.wsgi(trial_store.open_storage(config.storage))
    responses = []

    def call(path):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.errors": io.StringIO()}
        wsgiref.util.setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda status, headers, exc_info=None: responses.append(status)))
        assert responses[-1].startswith("200"), environ["wsgi.errors"].getvalue()[-2000:]
        return json.loads(body)

    studies = call("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dpc_search"]
    trials = call(f"/api/studies/{studies[0]['study_id']}")["trials"]
    assert len(trials) == 2 and trials[0]["params"][1]["name"] == "b0_op"
    assert (
        trials[0]["params"][1]["param_external_value"]
        in space_lib.distributions(config.space)["b0_op"].choices
    )
    assert all(status.startswith("200") for status in responses)
