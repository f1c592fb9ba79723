"""The shared command line: one exit status per kind of error in every entry point, --help without torch,
and nothing written before the inputs are checked."""

import argparse
import os
import subprocess
import sys

import pytest

from dinov2.data.datasets import SOURCES
from dinov2.search.options import IMAGE_SOURCES
from dinov2.train.train import CodeCollapseError, NonFiniteTrainingError
from dinov2.utils import cli
from dinov2.utils.cli import EXIT_INPUT, EXIT_OK, EXIT_STOPPED, run_cli
from dinov2.utils.config import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "dinov2", "train", "train.py")
LAUNCHER_SCRIPT = os.path.join(REPO_ROOT, "dinov2", "run", "train", "train.py")
HEAVY = ("torch", "numba", "faiss", "matplotlib")


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# Each entry point as a command line, with what it needs besides the config options.
def _commands(tmp_path):
    weights = tmp_path / "weights.pth"  # read only after the config is checked
    weights.write_bytes(b"not read")
    return {
        "train": [TRAIN_SCRIPT],
        "retrieval": ["-m", "dinov2.eval.retrieval", "--random-weights"],
        "baselines": ["-m", "dinov2.eval.baselines"],
        "search build": ["-m", "dinov2.search", "build", "--weights", str(weights), "--images", str(tmp_path)],
        "slurm launcher": [LAUNCHER_SCRIPT, "--local", "--ngpus", "1"],
    }


def _run(args, *extra, importtime=False):
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, *args, *extra], env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


@pytest.mark.parametrize("tool", ["train", "retrieval", "baselines", "search build", "slurm launcher"])
def test_bad_input_exits_2_in_every_entry_point_and_writes_nothing_before_torch_loads(tool, tmp_path):
    command = _commands(tmp_path)[tool]
    out = tmp_path / "out"
    cases = {
        "an unknown config key": (["train.no_such_key=1"], "train.no_such_key"),
        "a missing --config-file": (["--config-file", str(tmp_path / "nope.yaml")], "nope.yaml"),
    }
    for case, (extra, named) in cases.items():
        result = _run(command, "--output-dir", str(out), *extra, importtime=True)
        assert result.returncode == EXIT_INPUT, (case, result.stderr[-2000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert imported and not imported & set(HEAVY), (case, sorted(imported & set(HEAVY)))
        assert "error: " in result.stderr and named in result.stderr, (case, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (case, result.stderr[-2000:])
        assert not out.exists(), (case, sorted(os.listdir(out)))


@pytest.mark.parametrize("tool", ["train", "retrieval", "baselines", "search build", "slurm launcher"])
def test_help_answers_before_torch_or_any_other_heavy_library_is_imported(tool, tmp_path):
    result = _run(_commands(tmp_path)[tool], "--help", importtime=True)
    assert result.returncode == EXIT_OK, result.stderr[-2000:]
    assert "--config-file" in result.stdout and "Exit status" in result.stdout
    # -X importtime lists every module imported, one per line, ending "| <module name>".
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert imported, result.stderr[-2000:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_the_import_check_sees_torch_when_it_is_imported():
    result = _run(["-c", "import torch"], importtime=True)
    assert "torch" in {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}


def _raising(error):
    def main(args):
        raise error

    return main


def _parser():
    parser = argparse.ArgumentParser("t", parents=[cli.config_options()])
    parser.add_argument("--n", type=int, default=0)
    return parser


@pytest.mark.parametrize(
    "error, status",
    [
        (ConfigError("unknown config key 'a.b'"), EXIT_INPUT),
        (FileNotFoundError("x.pth not found"), EXIT_INPUT),
        (FileExistsError("out exists"), EXIT_INPUT),
        (CodeCollapseError("collapsed"), EXIT_STOPPED),
        (NonFiniteTrainingError("loss", 3, float("nan"), ""), EXIT_STOPPED),
    ],
)
def test_each_kind_of_error_has_its_exit_status(error, status, capsys):
    assert run_cli(_parser(), _raising(error), []) == status
    assert capsys.readouterr().err == f"error: {error}\n"


def test_success_help_usage_errors_and_other_exceptions(capsys):
    seen = []
    assert run_cli(_parser(), seen.append, ["--n", "3", "train.seed=1"]) == EXIT_OK
    assert seen[0].n == 3 and seen[0].opts == ["train.seed=1"]
    # The config is checked before main runs: an unknown key never reaches it.
    assert run_cli(_parser(), seen.append, ["train.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert run_cli(_parser(), seen.append, ["--help"]) == EXIT_OK
    assert run_cli(_parser(), seen.append, ["--n", "x"]) == 2 and "invalid int value" in capsys.readouterr().err
    assert len(seen) == 1
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(_parser(), _raising(ZeroDivisionError("bug")), [])


def test_main_named_by_path_is_imported_after_parsing(capsys):
    assert run_cli(_parser(), "dinov2.no_such_module:main", ["--help"]) == EXIT_OK
    with pytest.raises(ModuleNotFoundError):
        run_cli(_parser(), "dinov2.no_such_module:main", [])


def test_the_search_options_offer_the_image_sources_of_the_datasets():
    assert tuple(IMAGE_SOURCES) == tuple(SOURCES)


def test_counts_must_be_positive_integers_at_parse_time(capsys):
    parser = argparse.ArgumentParser("t")
    parser.add_argument("--batch-size", type=cli.positive_int)
    assert run_cli(parser, lambda args: None, ["--batch-size", "4"]) == EXIT_OK
    for bad in ("0", "-3", "x"):
        assert run_cli(parser, lambda args: None, ["--batch-size", bad]) == EXIT_INPUT
        assert f"argument --batch-size: '{bad}' is not a positive integer" in capsys.readouterr().err
