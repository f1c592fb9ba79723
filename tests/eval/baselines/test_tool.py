"""Tests of the baselines command line (dinov2/eval/baselines) and of scripts/results_table.py.

A 4-iteration training run of the tiny ViT on the tiny generated demo set (3 classes x 8 images of
32 px, 12 database images and 12 queries) provides a teacher checkpoint and a run directory; the
baselines tool runs in-process on the same options, on pixels and on that teacher's frozen backbone.
"""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dinov2.data import make_classification_eval_transform
from dinov2.eval.baselines import tool as baselines
from dinov2.eval.baselines.tool import METHODS, fit_baseline, make_pixel_transform
from dinov2.eval.hashing import mean_average_precision
from dinov2.models import build_hashing_network
from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module

from ...conftest import TINY_ARCH, TINY_OPTS, make_args, tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EMBED_DIM = 32  # of tiny_vit
# The config key of the dataset root, as the shared tiny options spell it (their value is "demo").
ROOT_KEY = next(opt.split("=", 1)[0] for opt in TINY_OPTS if opt.endswith("=demo"))


def load_results_table():
    spec = importlib.util.spec_from_file_location("results_table", os.path.join(REPO, "scripts", "results_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    mp_ = pytest.MonkeyPatch()
    mp_.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    out = tmp_path_factory.mktemp("run")
    train_module.main(make_args(out))
    yield out
    mp_.undo()


def run_cli(tmp_path, *extra, opts=()):
    argv = ["--output-dir", str(tmp_path), *extra, *TINY_OPTS, *opts]
    return baselines.main(argv)


def read_manifest(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def split_files(root, manifest, split):
    rows = [r for r in manifest if r["split"] == split]
    return [os.path.join(root, *r["file"].split("/")) for r in rows], np.array([int(r["label"]) for r in rows])


def test_pixels_all_rows_same_split_and_independent_recomputation(tmp_path, trained_run, capsys):
    assert run_cli(tmp_path, "--bits", "4,8,16", "--features", "pixels") == 0
    rows = json.loads((tmp_path / "baselines.json").read_text())
    assert [(r["method"], r["bits"]) for r in rows] == [(m, b) for m in METHODS for b in (4, 8, 16)]
    for r in rows:
        assert r["features"] == "pixels" and r["feature_dim"] == 3 * 16 * 16
        assert list(r)[:3] == ["method", "bits", "features"]
        assert 0.0 <= r["mAP"] <= 1.0 and "mAP@all" not in r
        for key in ("mAP_tie_aware", "P@1", "P@5", "P@10", "precision_radius2"):
            assert key in r, key
        assert r["num_database"] == 12 and r["num_queries"] == 12
    printed = capsys.readouterr().out
    assert "pixels    itq" in printed and "rows: " in printed

    # The split is the training run's, byte for byte.
    assert (tmp_path / "split_manifest.csv").read_bytes() == (trained_run / "split_manifest.csv").read_bytes()

    # Recompute one row from the files of the manifest, outside the tool's dataset and loader.
    root = rows[0]["data_root"]
    manifest = read_manifest(tmp_path / "split_manifest.csv")
    transform = make_pixel_transform(32, 16)

    def features(files):
        return np.stack([transform(Image.open(f).convert("RGB")).numpy() for f in files]).astype(np.float64)

    db_files, db_y = split_files(root, manifest, "train")
    q_files, q_y = split_files(root, manifest, "query")
    db, q = features(db_files), features(q_files)
    for method in ("itq", "lsh"):
        model = fit_baseline(method, db, 8, seed=0)
        expected = mean_average_precision(model.encode(q), model.encode(db), q_y, db_y)
        row = next(r for r in rows if r["method"] == method and r["bits"] == 8)
        assert row["mAP"] == pytest.approx(expected, abs=1e-12)


def test_backbone_features_of_a_teacher_and_skipped_lengths(tmp_path, trained_run, tiny_arch):
    weights = trained_run / "eval" / "best" / "teacher_checkpoint.pth"
    assert run_cli(tmp_path, "--bits", "8,48", "--weights", str(weights)) == 0
    rows = json.loads((tmp_path / "baselines.json").read_text())
    # Default features with weights: pixels and backbone; every method and length has a row.
    assert {(r["features"], r["method"], r["bits"]) for r in rows} == {
        (f, m, b) for f in ("pixels", "backbone") for m in METHODS for b in (8, 48)
    }
    backbone = {(r["method"], r["bits"]): r for r in rows if r["features"] == "backbone"}
    assert all(r["feature_dim"] == EMBED_DIM for r in backbone.values())
    # 48 PCA directions do not exist in 32 dimensions: the row says so instead of a number.
    for method in ("pcah", "itq"):
        assert backbone[(method, 48)]["mAP"] is None
        assert "bits=48 is larger than the feature dimension 32" in backbone[(method, 48)]["skipped"]
    assert backbone[("lsh", 48)]["mAP"] is not None and backbone[("sh", 48)]["mAP"] is not None

    # The features are the CLS token of the teacher's backbone on the evaluation transform.
    cfg = OmegaConf.load(trained_run / "config.yaml")
    network = build_hashing_network(cfg, str(weights))
    manifest = read_manifest(tmp_path / "split_manifest.csv")
    root = rows[0]["data_root"]
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)

    def cls(files):
        images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            return network.backbone.forward_features(images)["x_norm_clstoken"].double().numpy()

    db_files, db_y = split_files(root, manifest, "train")
    q_files, q_y = split_files(root, manifest, "query")
    db, q = cls(db_files), cls(q_files)
    model = fit_baseline("itq", db, 8, seed=0)
    expected = mean_average_precision(model.encode(q), model.encode(db), q_y, db_y)
    assert backbone[("itq", 8)]["mAP"] == pytest.approx(expected, abs=0.02)


def test_results_table_on_produced_files(tmp_path, trained_run, capsys):
    assert run_cli(tmp_path / "bl", "--bits", "8,16", "--methods", "lsh,itq") == 0
    table_module = load_results_table()
    capsys.readouterr()
    assert table_module.main([str(trained_run), str(tmp_path / "bl" / "baselines.json"), "--sources"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| Method | 8 bits | 16 bits |"
    assert table[1] == "|---|---:|---:|"
    rows = json.loads((tmp_path / "bl" / "baselines.json").read_text())
    value = {(r["method"], r["bits"]): r["mAP"] for r in rows}
    # The run trained 16-bit codes (hash.hash_bit of its config): its chance level first, its best evaluation last.
    summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    assert table[2] == f"| random codes | – | {summary['random_codes_mAP']:.4f} |"
    assert table[3] == f"| LSH (pixels) | {value['lsh', 8]:.4f} | {value['lsh', 16]:.4f} |"
    assert table[4] == f"| ITQ (pixels) | {value['itq', 8]:.4f} | {value['itq', 16]:.4f} |"
    evaluations = [json.loads(line) for line in (trained_run / "eval" / "retrieval_metrics.jsonl").read_text().splitlines()]
    best = max(e["mAP"] for e in evaluations if "split" not in e)
    assert table[5] == f"| SDSH | – | {best:.4f} |"
    assert len(table) == 6 + 1 + 3  # a blank line and the sources: run, its summary, baselines.json
    # A directory holding baselines.json and a LABEL= prefix work too; bad inputs exit 2 naming the path.
    assert table_module.main([f"pixels-only={tmp_path / 'bl'}"]) == 0
    assert "| pixels-only LSH (pixels) |" in capsys.readouterr().out
    assert table_module.main([str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert table_module.main([str(tmp_path / "bad.json")]) == 2
    assert "bad.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", "0"], "--bits: '0' is not a positive integer"),
        (["--bits", "16,x"], "--bits: 'x' is not a positive integer"),
        (["--methods", "lsh,kmeans"], "--methods: unknown value(s) kmeans"),
        (["--features", "backbone"], "--features backbone needs --weights"),
        (["--weights", "missing.pth"], "weights file not found: missing.pth"),
        (["--pixel-size", "0"], "--pixel-size=0"),
    ],
)
def test_bad_options_exit_2_naming_the_value(tmp_path, capsys, extra, message):
    assert run_cli(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "baselines.json").exists()


def test_bad_config_and_data_exit_2(tmp_path, capsys):
    assert run_cli(tmp_path, opts=["evaluation.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert run_cli(tmp_path, opts=[f"{ROOT_KEY}={tmp_path / 'absent'}"]) == 2
    assert "absent" in capsys.readouterr().err
    assert baselines.main(["--bits", "8"]) == 2
    assert "--output-dir is required" in capsys.readouterr().err


def test_help(capsys):
    assert baselines.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--features" in out and "pixels" in out and "backbone" in out and "baselines.json" in out


def test_backbone_features_of_bare_dinov2_weights(tmp_path, tiny_arch):
    """A plain DINOv2 backbone state dict (the layout of dinov2_vits14_pretrain.pth) gives "DINOv2 + ITQ"."""
    backbone = tiny_vit(patch_size=8, img_size=32)
    torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
    argv = ["--features", "backbone", "--weights", str(tmp_path / "backbone.pth"), "--bits", "8", "--methods", "itq"]
    assert run_cli(tmp_path / "out", *argv) == 0
    (row,) = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert row["features"] == "backbone" and row["method"] == "itq" and row["feature_dim"] == EMBED_DIM
    assert "(dinov2_backbone)" in row["features_description"]
    assert 0.0 <= row["mAP"] <= 1.0
