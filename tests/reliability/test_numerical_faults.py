"""Numerical faults stop training with the cause named and leave the last good checkpoint as it was.

tests/train/test_train.py covers a NaN loss term (hash_reg_loss); here: an infinite loss term, a
NaN gradient (finite loss), and weights that become NaN without any loss or gradient check seeing it.
"""

import shutil

import pytest
import torch

from dinov2.checkpoint import CheckpointError
from dinov2.loss import DINOLoss
from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module
from dinov2.train.ssl_meta_arch import SSLMetaArch

from ..conftest import TINY_ARCH, make_args, tiny_vit

MAX_ITER = 4  # optim.epochs=2 x OFFICIAL_EPOCH_LENGTH=2; checkpoints at iterations 1 and 3


def _snapshot(out):
    names = sorted(p.name for p in out.glob("model_*.pth")) + ["last_checkpoint"]
    files = {name: (out / name).read_bytes() for name in names}
    for kind in ("best", "last"):
        files[kind] = (out / "eval" / kind / "teacher_checkpoint.pth").read_bytes()
    return files


def _assert_unchanged(out, before):
    after = _snapshot(out)
    assert after == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished 4-iteration run; each test works on its own copy."""
    patch = pytest.MonkeyPatch()
    patch.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    out = tmp_path_factory.mktemp("finished")
    train_module.main(make_args(out))
    patch.undo()
    return out


@pytest.fixture
def trained(finished_run, tmp_path, tiny_arch):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    # The copied config names the original output directory; the run writes its own.
    return out, _snapshot(out)


def test_infinite_loss_names_the_term_and_iteration(trained, monkeypatch):
    out, before = trained
    original = DINOLoss.forward

    def infinite(self, *args, **kwargs):
        return original(self, *args, **kwargs) * float("inf")

    monkeypatch.setattr(DINOLoss, "forward", infinite)
    with pytest.raises(train_module.NonFiniteTrainingError, match=r"dino_local_crops_loss.*inf.*iteration 4"):
        train_module.main(make_args(out, "optim.epochs=3"))
    _assert_unchanged(out, before)


def test_nan_gradient_with_a_finite_loss_stops_before_the_optimizer_step(trained, monkeypatch):
    out, before = trained
    original = SSLMetaArch.backprop_loss

    def poisoned_backward(self, loss):
        original(self, loss)
        next(self.student.hash_head.parameters()).grad.fill_(float("nan"))

    monkeypatch.setattr(SSLMetaArch, "backprop_loss", poisoned_backward)
    with pytest.raises(train_module.NonFiniteTrainingError, match=r"gradient of student\.hash_head.*iteration 4") as info:
        train_module.main(make_args(out, "optim.epochs=3"))
    assert info.value.iteration == MAX_ITER
    _assert_unchanged(out, before)


def test_nan_weights_are_never_saved_over_the_last_checkpoint(trained, monkeypatch):
    """Without gradient clipping nothing checks the gradients: the checkpointer refuses the NaN weights."""
    out, before = trained
    original = SSLMetaArch.update_teacher
    calls = []

    def poisoned_update(self, momentum):
        original(self, momentum)
        calls.append(momentum)
        if len(calls) == 2:
            # Iteration 5, the checkpoint iteration: the NaN reaches no loss before the save.
            with torch.no_grad():
                self.teacher.dino_head.last_layer.weight_g.fill_(float("nan"))

    monkeypatch.setattr(SSLMetaArch, "update_teacher", poisoned_update)
    # Resume at iteration 4; no evaluation before the checkpoint of iteration 5.
    with pytest.raises(CheckpointError, match=r"teacher\.dino_head\.last_layer.*NaN or inf"):
        train_module.main(make_args(out, "optim.epochs=3", "optim.clip_grad=0", "evaluation.eval_period_iterations=0"))
    _assert_unchanged(out, before)
