"""A Hugging Face parquet dataset through every tool: training, the retrieval tool, the baselines and the index.

The demo images (3 classes x 8 of 32 px) are written in the Hub's layout: ``data/train-*.parquet`` (4 per
class, the database) and ``data/test-*.parquet`` (4 per class, the queries), with a list of class labels
per image where classes 0 and 1 share a second label, so relevance is "a shared label".
"""

import io
import json
import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("pyarrow", reason="data.source=parquet needs pyarrow (pip install 'sdsh[parquet]')")

from dinov2.data import generate_demo_dataset, make_classification_eval_transform  # noqa: E402
from dinov2.data.datasets import ParquetDataset  # noqa: E402
from dinov2.eval.baselines import tool as baselines  # noqa: E402
from dinov2.eval.encode import extract_codes  # noqa: E402
from dinov2.eval.metrics import evaluate_codes  # noqa: E402
from dinov2.eval.retrieval import tool as retrieval  # noqa: E402
from dinov2.models import build_hashing_network  # noqa: E402
from dinov2.search import cli as index_cli  # noqa: E402
from dinov2.search.archive import ArchiveSearcher  # noqa: E402
from dinov2.train import train as train_module  # noqa: E402

from ..conftest import TINY_OPTS, make_args, write_hub_parquet  # noqa: E402


def write_hub_dataset(images_root, root):
    """The class folders of ``images_root`` as a multi-label Hub dataset under ``root``; returns the class names."""
    classes = sorted(name for name in os.listdir(images_root) if not name.startswith("."))
    names = [*classes, "pair"]
    rows = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(classes):
        files = sorted(os.listdir(os.path.join(images_root, name)))
        for position, file in enumerate(files):
            with open(os.path.join(images_root, name, file), "rb") as f:
                data = f.read()
            split = "train" if position < len(files) // 2 else "test"
            rows[split][0].append(data)
            rows[split][1].append([label, len(classes)] if label < 2 else [label])
    for split, (images, labels) in rows.items():
        write_hub_parquet(root / "data" / f"{split}-00000-of-00001.parquet", images, labels, names, row_group_size=3, list_labels=True)
    return names


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub")
    images = generate_demo_dataset(base / "images", num_classes=3, images_per_class=8, image_size=32)
    root = base / "hub_dataset"
    names = write_hub_dataset(images, root)
    (root / "README.md").write_text("dataset card\n")
    return {"root": root, "names": names}


def test_a_multi_label_parquet_dataset_trains_evaluates_and_indexes(tmp_path, hub, tiny_arch, capsys):
    root = hub["root"]
    out = tmp_path / "run"
    summary = train_module.main(make_args(out, f"train.data_path={root}", "data.source=auto"))

    evals = [json.loads(line) for line in (out / "eval" / "retrieval_metrics.jsonl").read_text().splitlines()]
    assert evals and evals[-1]["num_database"] == 12 and evals[-1]["num_queries"] == 12
    assert all(math.isfinite(e["mAP"]) for e in evals) and summary["best_mAP"] == max(e["mAP"] for e in evals)
    # The last evaluation equals a recomputation with multi-hot labels from the saved teacher.
    cfg = OmegaConf.load(out / "config.yaml")
    weights = str(out / "eval" / "last" / "teacher_checkpoint.pth")
    network = build_hashing_network(cfg, weights).eval()
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    db = ParquetDataset(root, "train", transform=transform)
    queries = ParquetDataset(root, "query", transform=transform)
    assert db.multi_label and db.targets.shape == (12, 4) and db.classes == hub["names"]
    device = torch.device("cpu")
    db_codes, db_labels = extract_codes(network, db, 8, 0, device, progress=False)
    q_codes, q_labels = extract_codes(network, queries, 8, 0, device, progress=False)
    expected = evaluate_codes(q_codes, db_codes, q_labels, db_labels, topk=cfg.evaluation.topk)
    assert evals[-1]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    # Relevance is "a shared label": scoring by the first label alone differs.
    single = evaluate_codes(q_codes, db_codes, q_labels.argmax(1), db_labels.argmax(1), topk=cfg.evaluation.topk)
    assert single["mAP"] != pytest.approx(expected["mAP"], abs=1e-6)
    manifest = (out / "split_manifest.csv").read_text().splitlines()
    assert len(manifest) == 25 and manifest[1].endswith(f",0;3,{hub['names'][0]};pair,query")

    # The retrieval tool reads the same rows and writes the same mAP.
    opts = [*TINY_OPTS, f"train.data_path={root}", "data.source=parquet"]
    assert retrieval.main(["--weights", weights, "--output-dir", str(tmp_path / "eval"), "--device", "cpu", *opts]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert (tmp_path / "eval" / "retrieval_grid.png").stat().st_size > 0  # thumbnails come from parquet rows

    # The baselines run on the pixels of the same rows.
    assert baselines.main(["--output-dir", str(tmp_path / "baselines"), "--bits", "8", "--features", "pixels", *opts]) == 0
    rows = json.loads((tmp_path / "baselines" / "baselines.json").read_text())
    assert rows and all(r["num_database"] == 12 and r["num_queries"] == 12 for r in rows)

    # The index: every row encoded, a row found as its own nearest neighbour, its bytes served back.
    index_dir = tmp_path / "index"
    argv = ["build", "--weights", weights, "--images", str(root), "--output-dir", str(index_dir), "--device", "cpu"]
    assert index_cli.main([*argv, *TINY_OPTS]) == 0
    searcher = ArchiveSearcher(str(index_dir), device="cpu")
    assert searcher.count == 24
    record = searcher.records[5]
    assert record["path"].startswith("data/test-00000-of-00001.parquet#") and record["labels"]
    data = searcher.image_data(5)
    from PIL import Image

    results = searcher.search(Image.open(io.BytesIO(data)).convert("RGB"), 24)
    assert results[0]["distance"] == 0 and 5 in [r["id"] for r in results if r["distance"] == 0]
    assert np.isfinite([r["distance"] for r in results]).all()
    fastapi = pytest.importorskip("fastapi.testclient", reason="the service needs FastAPI and httpx")
    from dinov2.search.service import create_app

    with fastapi.TestClient(create_app(searcher)) as client:
        served = client.get("/images/5")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png" and served.content == data
    capsys.readouterr()
