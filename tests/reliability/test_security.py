"""Security: checkpoints never run code when loaded, and the package never runs shell commands.

A checkpoint whose pickle holds a callable (here ``exec`` writing a marker file) must be refused by
every loader with an error naming the file, and the marker must not appear. Static checks scan the
package's source with ``ast``.
"""

import ast
import os
import pathlib

import pytest
import torch
import torch.multiprocessing as mp

from dinov2.checkpoint import CheckpointError, CheckpointFormatError, FSDPCheckpointer, load_pretrained_weights
from dinov2.models import build_hashing_network
from dinov2.train import train as train_module
from dinov2.utils.config import merge_config

from ..conftest import TINY_OPTS, free_port, make_args, tiny_vit
from .conftest import REPO_ROOT

PACKAGE = pathlib.Path(REPO_ROOT) / "dinov2"


class _Payload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _malicious_checkpoint(path, marker, layout="plain"):
    tensors = tiny_vit().state_dict()
    if layout == "plain":
        content = {**tensors, "extra": _Payload(str(marker))}
    else:
        content = {"model": {"teacher.backbone.cls_token": tensors["cls_token"]}, "iteration": _Payload(str(marker))}
    torch.save(content, path)
    return path


def test_the_payload_runs_code_under_a_full_unpickler(tmp_path):
    # Control: the file really is dangerous, so the refusals below are meaningful.
    marker = tmp_path / "marker"
    path = _malicious_checkpoint(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_load_pretrained_weights_refuses_code(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious_checkpoint(tmp_path / "evil_pretrained.pth", marker)
    with pytest.raises(RuntimeError, match="evil_pretrained.pth"):
        load_pretrained_weights(tiny_vit(), str(path))
    assert not marker.exists()


def test_build_hashing_network_refuses_code(tmp_path, tiny_arch):
    marker = tmp_path / "marker"
    path = _malicious_checkpoint(tmp_path / "evil_teacher.pth", marker)
    with pytest.raises(CheckpointFormatError, match="evil_teacher.pth"):
        build_hashing_network(merge_config(None, TINY_OPTS), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["code", "foreign"])
def test_training_resume_refuses_code_and_foreign_checkpoints_without_overwriting(tmp_path, tiny_arch, kind):
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    out.mkdir()
    path = out / "model_0000001.pth"
    if kind == "code":
        _malicious_checkpoint(path, marker, layout="training")
    else:
        # A readable torch file of another program: no "model" entry.
        torch.save({"state_dict": tiny_vit().state_dict(), "epoch": 3}, path)
    (out / "last_checkpoint").write_text(path.name)
    content = path.read_bytes()
    with pytest.raises(CheckpointError, match="model_0000001.pth"):
        train_module.main(make_args(out))
    assert not marker.exists()
    assert path.read_bytes() == content and (out / "last_checkpoint").read_text() == path.name
    assert not list(out.glob("model_000000[2-9]*")) and not (out / "model_final.pth").exists()


def test_checkpointer_refuses_code_in_a_direct_load(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious_checkpoint(tmp_path / "evil_training.pth", marker, layout="training")
    with pytest.raises(CheckpointError, match="evil_training.pth"):
        FSDPCheckpointer(tiny_vit(), str(tmp_path)).load(str(path))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Static checks of the package source


def _calls(tree):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _package_sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in files]


def test_every_torch_load_uses_weights_only_true():
    found = []
    for path, tree in _package_sources():
        for call in _calls(tree):
            if _dotted(call.func) == "torch.load":
                flag = next((kw.value for kw in call.keywords if kw.arg == "weights_only"), None)
                where = f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load without weights_only=True"
                found.append(where)
    # Every reader (pretrained weights, checkpoint formats, resume, eval-only) goes through the one in the I/O module.
    assert len(found) == 1 and found[0].startswith("dinov2/checkpoint/io.py:"), found


def test_no_shell_commands_or_code_execution_in_the_package():
    forbidden_calls = {"os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads", "yaml.load",
                       "os.execv", "os.execvp", "os.spawnv", "os.spawnl"}
    problems = []
    for path, tree in _package_sources():
        where = path.relative_to(REPO_ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names if a.name == "subprocess"]
            elif isinstance(node, ast.ImportFrom) and node.module == "subprocess":
                problems.append(f"{where}:{node.lineno} imports from subprocess")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in forbidden_calls:
                    problems.append(f"{where}:{node.lineno} calls {name}")
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        problems.append(f"{where}:{node.lineno} passes shell=")
    assert not problems, problems


# ----------------------------------------------------------------------------------------------
# FSDP shards are saved as plain tensors, so they load with weights_only=True too


def _sharded_round_trip(rank, world_size, port, save_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        torch.manual_seed(0)
        model = FSDP(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)), device_id=torch.device("cpu"))
        checkpointer = FSDPCheckpointer(model, save_dir)
        assert checkpointer.sharded
        with torch.no_grad():
            saved = [p.detach().clone() for p in model.parameters()]
        checkpointer.save("model_shard_test", iteration=7)
        path = os.path.join(save_dir, f"model_shard_test.rank_{rank}.pth")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert all(type(v) is torch.Tensor for v in raw["model"].values())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        state = checkpointer.resume_or_load("", resume=True)
        assert state["iteration"] == 7
        for before, p in zip(saved, model.parameters()):
            assert torch.equal(before, p.detach()), "sharded parameters not restored"
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_shards_round_trip_with_weights_only(tmp_path):
    mp.spawn(_sharded_round_trip, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("model_shard_test.rank_*.pth")) == [
        "model_shard_test.rank_0.pth",
        "model_shard_test.rank_1.pth",
    ]
