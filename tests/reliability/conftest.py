"""Reliability test pieces: a launcher script and the environment of training subprocesses.

The tiny ViT and the tiny training options are shared by all tests (tests/conftest.py). The launcher lets a subprocess run the real entry point (``python dinov2/train/train.py`` with its
``__main__`` block) after registering the tiny ViT, which a monkeypatch cannot do across processes.
"""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "dinov2", "train", "train.py")

_LAUNCHER = """\
import runpy
import sys

sys.path.insert(0, {tests_dir!r})
from conftest import TINY_ARCH, tiny_vit  # noqa: E402
from dinov2.models import vision_transformer as vits  # noqa: E402

setattr(vits, TINY_ARCH, tiny_vit)
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture
def launcher(tmp_path):
    """Path of a script that registers the tiny ViT, then runs dinov2/train/train.py as ``__main__``."""
    path = tmp_path / "launch_train.py"
    path.write_text(_LAUNCHER.format(tests_dir=os.path.join(REPO_ROOT, "tests"), script=TRAIN_SCRIPT))
    return str(path)


def subprocess_env():
    """Environment of a training subprocess: one thread (deterministic and light on 2 cores), and this
    checkout's ``dinov2`` first on the path (an installed copy elsewhere must not be the one tested)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


PYTHON = sys.executable
