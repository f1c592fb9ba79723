"""Training on the other image sources: a multi-label image list and an unlabeled folder tree."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dinov2.data import generate_demo_dataset, make_classification_eval_transform
from dinov2.data.datasets import ImageListDataset
from dinov2.eval.encode import extract_codes
from dinov2.eval.metrics import evaluate_codes
from dinov2.models import build_hashing_network
from dinov2.train import train as train_module
from dinov2.utils.config import ConfigError
from dinov2.utils.validation import InputNotFoundError

from ..conftest import make_args


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    """3 classes x 8 images of 32 px (the tiny run's size), as class folders."""
    return generate_demo_dataset(tmp_path_factory.mktemp("images") / "demo", num_classes=3, images_per_class=8, image_size=32)


def run(output_dir, data_path, source, **kwargs):
    return train_module.main(make_args(output_dir, f"train.data_path={data_path}", f"data.source={source}", **kwargs))


def test_multi_label_list_trains_and_scores_with_shared_label_relevance(tmp_path, demo_images, tiny_arch):
    classes = sorted(name for name in os.listdir(demo_images) if not name.startswith("."))
    lines = ["path,labels"]
    for index, name in enumerate(classes):
        # A second label shared by classes 0 and 1 makes their images relevant to each other.
        extra = ";pair" if index < 2 else ""
        for file in sorted(os.listdir(os.path.join(demo_images, name))):
            lines.append(f"{os.path.join(demo_images, name, file)},{name}{extra}")
    list_file = tmp_path / "tiles.csv"
    list_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    summary = run(out, list_file, "image_list")

    evals = [json.loads(line) for line in (out / "eval" / "retrieval_metrics.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [1, 3] and evals[-1]["num_database"] == 12
    assert all(math.isfinite(e["mAP"]) for e in evals) and summary["best_mAP"] == max(e["mAP"] for e in evals)
    # The last evaluation equals a recomputation with multi-hot labels from the saved teacher.
    cfg = OmegaConf.load(out / "config.yaml")
    network = build_hashing_network(cfg, str(out / "eval" / "last" / "teacher_checkpoint.pth")).eval()
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    db = ImageListDataset(list_file, "train", 0.5, transform=transform)
    queries = ImageListDataset(list_file, "query", 0.5, transform=transform)
    assert db.multi_label and db.targets.shape == (12, 4)
    device = torch.device("cpu")
    db_codes, db_labels = extract_codes(network, db, 8, 0, device, progress=False)
    q_codes, q_labels = extract_codes(network, queries, 8, 0, device, progress=False)
    assert db_labels.shape == (12, 4)
    expected = evaluate_codes(q_codes, db_codes, q_labels, db_labels, topk=cfg.evaluation.topk)
    assert evals[-1]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    # Relevance is "a shared label": single-label scoring of the same codes differs.
    single = evaluate_codes(q_codes, db_codes, q_labels.argmax(1), db_labels.argmax(1), topk=cfg.evaluation.topk)
    assert single["mAP"] != pytest.approx(expected["mAP"], abs=1e-6)
    manifest = (out / "split_manifest.csv").read_text().splitlines()
    assert len(manifest) == 25 and manifest[1].endswith(f",{classes[0]};pair,train")


def test_unlabeled_tree_trains_without_evaluation_and_keeps_the_teacher(tmp_path, demo_images, tiny_arch):
    tree = tmp_path / "archive"
    for index, name in enumerate(sorted(n for n in os.listdir(demo_images) if not n.startswith("."))):
        # Mixed depths, no class layout.
        target = tree / ("flight_a" if index else "") / ("strip_2" if index == 2 else "")
        shutil.copytree(os.path.join(demo_images, name), target, dirs_exist_ok=True, copy_function=shutil.copy)
        for file in os.listdir(target):
            if not file.startswith(name) and os.path.isfile(target / file):
                os.rename(target / file, target / f"{name}_{file}")
    out = tmp_path / "run"
    summary = run(out, tree, "folder_tree")
    log = (out / "log.txt").read_text()
    assert "has no labels: training without retrieval evaluation" in log and "no retrieval evaluation" in log
    assert summary["labeled"] is False and summary["last_iteration"] == 3
    assert not (out / "eval" / "retrieval_metrics.jsonl").exists()
    last = torch.load(out / "eval" / "last" / "teacher_checkpoint.pth", map_location="cpu", weights_only=True)
    assert last["iteration"] == 3 and math.isnan(last["mAP"])
    assert json.loads((out / "eval" / "summary.json").read_text())["last_teacher"].endswith("teacher_checkpoint.pth")
    rows = (out / "split_manifest.csv").read_text().splitlines()
    assert len(rows) == 25 and all(row.endswith(",,,train") for row in rows[1:])
    with pytest.raises(ConfigError, match="--eval-only needs labelled images"):
        run(out, tree, "folder_tree", eval_only=True)
    # A folder given as an image list is refused before anything is written.
    with pytest.raises(InputNotFoundError, match="is a folder but data.source=image_list"):
        run(tmp_path / "never", tree, "image_list")
    assert not (tmp_path / "never" / "config.yaml").exists()


def test_class_folders_on_a_list_file_points_to_image_list(tmp_path, tiny_arch):
    list_file = tmp_path / "tiles.csv"
    list_file.write_text("a.png,x\n")
    with pytest.raises(InputNotFoundError, match="is a file, not a folder: for an image list set data.source=image_list"):
        run(tmp_path / "run", list_file, "class_folders")
    with pytest.raises(ConfigError, match="data.source"):
        run(tmp_path / "run", list_file, "csv")
    assert np.all([not (tmp_path / "run" / name).exists() for name in ("config.yaml", "split_manifest.csv")])
