"""One metric schema: the trainer's evaluations, the retrieval tool and the baselines share dinov2/eval/metrics.py.

The schema is checked against the metric library on hand-made codes, and end to end: the retrieval
tool run on a tiny run's last teacher with the run's saved config.yaml writes exactly the numbers of
the run's last line of eval/retrieval_metrics.jsonl, under the same keys.
"""

import json

import numpy as np
import pytest
import torch

from dinov2.eval.hashing import (
    code_collapse_stats,
    mean_average_precision,
    precision_at_k,
    precision_within_radius,
    tie_aware_mean_average_precision,
)
from dinov2.eval.hashing.collapse import COLLAPSE_KEYS
from dinov2.eval.metrics import evaluate_codes, retrieval_metrics, selection_value
from dinov2.eval.retrieval import tool as retrieval
from dinov2.logging import read_jsonl
from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module
from dinov2.utils.config import ConfigError

from ..conftest import TINY_ARCH, TINY_OPTS, make_args, tiny_vit

# The config key of the dataset root, as the shared tiny options spell it (their value is "demo").
ROOT_KEY = next(opt.split("=", 1)[0] for opt in TINY_OPTS if opt.endswith("=demo"))
COUNT_KEYS = {"topk", "num_queries", "num_database", "bits"}


def schema_part(metrics):
    """The keys of a metrics dict that the schema defines (the tool adds paths and timing, the trainer the iteration)."""
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(("mAP", "P@", "precision_radius")) or k in COUNT_KEYS or k in COLLAPSE_KEYS
    }


def random_case(num_queries=20, num_db=150, bits=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.choice([-1, 1], size=(num_queries, bits)).astype(np.int8)
    d = rng.choice([-1, 1], size=(num_db, bits)).astype(np.int8)
    return q, d, rng.integers(0, classes, num_queries), rng.integers(0, classes, num_db)


def test_retrieval_metrics_keys_and_values_are_those_of_the_library():
    q, d, ql, dl = random_case()
    metrics = retrieval_metrics(q, d, ql, dl)
    assert set(metrics) == {
        "mAP", "mAP_tie_aware", "mAP@100", "mAP_tie_aware@100",
        "P@1", "P@5", "P@10", "P@50", "P@100", "precision_radius2", *COUNT_KEYS, *COLLAPSE_KEYS,
    }  # fmt: skip
    assert metrics["mAP"] == mean_average_precision(q, d, ql, dl)
    assert metrics["mAP@100"] == mean_average_precision(q, d, ql, dl, topk=100)
    assert metrics["mAP_tie_aware"] == tie_aware_mean_average_precision(q, d, ql, dl)
    assert metrics["P@50"] == pytest.approx(precision_at_k(q, d, ql, dl, k=50), abs=1e-15)
    assert metrics["precision_radius2"] == precision_within_radius(q, d, ql, dl, radius=2)
    assert (metrics["topk"], metrics["num_queries"], metrics["num_database"], metrics["bits"]) == ("all", 20, 150, 12)
    # collapse statistics describe the database codes
    assert {k: metrics[k] for k in COLLAPSE_KEYS} == code_collapse_stats(d)
    # mAP is mAP@all whatever the reported depth; evaluation.topk only chooses the mAP@k depths
    at_7 = retrieval_metrics(q, d, ql, dl, topk=7)
    assert at_7["mAP"] == metrics["mAP"] and "mAP@100" not in at_7
    assert at_7["mAP@7"] == mean_average_precision(q, d, ql, dl, topk=7) and at_7["topk"] == 7
    with pytest.raises(ConfigError, match="evaluation.topk=0"):
        retrieval_metrics(q, d, ql, dl, topk=0)


def test_evaluate_codes_binarises_then_uses_the_schema():
    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(9, 16, generator=g), torch.randn(30, 16, generator=g)
    ql, dl = torch.randint(0, 3, (9,), generator=g), torch.randint(0, 3, (30,), generator=g)
    assert evaluate_codes(q, d, ql, dl) == retrieval_metrics(torch.where(q >= 0, 1, -1), torch.where(d >= 0, 1, -1), ql, dl)


def test_selection_value_is_map_at_topk_when_set_else_map():
    metrics = {"mAP": 0.5, "mAP@10": 0.7}
    assert selection_value(metrics) == 0.5
    assert selection_value(metrics, 10) == 0.7
    assert selection_value(metrics, 500) == 0.5  # depth above the database: mAP@500 is mAP@all


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    out = tmp_path_factory.mktemp("run")
    train_module.main(make_args(out))
    yield out
    patch.undo()


def test_retrieval_tool_reproduces_the_trainers_last_map(trained_run, tmp_path):
    lines = read_jsonl(str(trained_run / "eval" / "retrieval_metrics.jsonl"))
    last = [line for line in lines if "split" not in line and not line.get("eval_only")][-1]
    teacher = trained_run / "eval" / "last" / "teacher_checkpoint.pth"
    assert torch.load(teacher, weights_only=True)["iteration"] == last["iteration"]
    argv = [
        "--config-file", str(trained_run / "config.yaml"),
        "--weights", str(teacher),
        "--output-dir", str(tmp_path / "tool"),
        "--no-plots",
        f"{ROOT_KEY}=demo",  # the run's demo data: the same sizes, the same cached folder
    ]  # fmt: skip
    assert retrieval.main(argv) == 0
    metrics = json.loads((tmp_path / "tool" / "metrics.json").read_text())
    assert metrics["mAP"] == last["mAP"]
    assert schema_part(metrics) == schema_part(last)
    assert {"mAP", "mAP_tie_aware", "P@1", "P@10", "precision_radius2"} <= set(schema_part(last))
