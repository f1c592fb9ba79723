"""scripts/gpu_check.sh: its usage and its failure path (the full CPU mode takes minutes; docs/gpu.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def _run(*args, device=None):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("SDSH_GPU_CHECK_DEVICE", None)
    if device:
        env["SDSH_GPU_CHECK_DEVICE"] = device
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120)


def test_usage_without_an_output_directory():
    result = _run()
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_without_cuda_it_fails_with_the_reason_in_the_table_and_the_json(tmp_path):
    result = _run(str(tmp_path))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "| versions | NO |" in result.stdout and "SDSH_GPU_CHECK_DEVICE=cpu" in result.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] is False and report["rows"]["versions"]["ok"] is False
    assert report["rows"]["versions"]["torch"] == torch.__version__
