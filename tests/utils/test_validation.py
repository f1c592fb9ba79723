"""One start-up check for every entry point (dinov2.utils.validation.check_run_inputs)."""

import pytest

from dinov2.eval.baselines import tool as baselines
from dinov2.eval.retrieval import tool as retrieval
from dinov2.run.train import train as launcher
from dinov2.utils.config import ConfigError, merge_config
from dinov2.utils.validation import check_run_inputs

from ..conftest import TINY_OPTS, make_args


def _cfg(*opts):
    return merge_config(None, TINY_OPTS + list(opts))


def test_missing_pretrained_weights_are_named_with_the_fix(tmp_path):
    missing = tmp_path / "w" / "dinov2_vits14_pretrain.pth"
    with pytest.raises(ConfigError) as info:
        check_run_inputs(_cfg(f"student.pretrained_weights={missing}"))
    message = str(info.value)
    assert str(missing) in message and "student.pretrained_weights=" in message and "random weights" in message
    # Not needed (a full checkpoint replaces the backbone): no complaint.
    check_run_inputs(_cfg(f"student.pretrained_weights={missing}"), need_pretrained=False)


def test_directory_as_weights_and_missing_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        check_run_inputs(_cfg(f"student.pretrained_weights={tmp_path}"))
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS file not found"):
        check_run_inputs(_cfg(f"MODEL.WEIGHTS={tmp_path / 'ckpt.pth'}"))
    with pytest.raises(ConfigError, match="--weights file not found"):
        check_run_inputs(_cfg(), weights=str(tmp_path / "teacher.pth"))


def test_data_path_problems_are_named(tmp_path):
    with pytest.raises(ConfigError, match="train.data_path is empty"):
        check_run_inputs(_cfg("train.data_path="))
    with pytest.raises(ConfigError, match="does not exist"):
        check_run_inputs(_cfg(f"train.data_path={tmp_path / 'nope'}"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_run_inputs(_cfg(f"train.data_path={a_file}"))
    with pytest.raises(ConfigError, match="has no class folders"):
        check_run_inputs(_cfg(f"train.data_path={tmp_path}"))
    (tmp_path / "class_a").mkdir()
    check_run_inputs(_cfg(f"train.data_path={tmp_path}"))
    check_run_inputs(_cfg("train.data_path=demo"))
    check_run_inputs(_cfg("train.data_path="), need_data=False)


def test_values_are_checked_first():
    with pytest.raises(ConfigError, match="train.train_ratio"):
        check_run_inputs(_cfg("train.train_ratio=1.5", "train.data_path="))


MISSING = "/nowhere/dinov2_vits14_pretrain.pth"


def test_training_and_eval_only_refuse_before_writing(tmp_path, tiny_arch):
    from dinov2.train import train as train_module

    for eval_only in (False, True):
        out = tmp_path / f"run{eval_only}"
        with pytest.raises(ConfigError, match=MISSING):
            train_module.main(make_args(out, f"student.pretrained_weights={MISSING}", eval_only=eval_only))
        assert not (out / "config.yaml").exists()


def test_retrieval_and_baselines_tools_give_the_same_message(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["--random-weights", "--output-dir", str(out), *TINY_OPTS, f"student.pretrained_weights={MISSING}"]
    assert retrieval.main(argv) == 2
    retrieval_err = capsys.readouterr().err
    argv = ["--output-dir", str(out), "--features", "backbone", *TINY_OPTS, f"student.pretrained_weights={MISSING}"]
    assert baselines.main(argv) == 2
    baselines_err = capsys.readouterr().err
    assert MISSING in retrieval_err and retrieval_err == baselines_err
    assert not out.exists() or not any(out.iterdir())


def test_slurm_launcher_refuses_before_submitting(tmp_path, capsys, monkeypatch):
    submitted = []
    monkeypatch.setattr(launcher, "submit_jobs", lambda *args, **kwargs: submitted.append(args))
    argv = ["--ngpus", "1", "--output-dir", str(tmp_path / "run"), *TINY_OPTS, "train.data_path=/nowhere/AID"]
    with pytest.raises(SystemExit) as info:
        launcher.main(argv)
    assert info.value.code == 2 and "train.data_path=/nowhere/AID does not exist" in capsys.readouterr().err
    assert submitted == []
