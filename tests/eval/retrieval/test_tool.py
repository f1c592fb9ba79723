"""Tests of dinov2/eval/retrieval: the command-line tool run in-process on a tiny model and dataset.

A width-32, depth-1 ViT (patch 7, global crop 28, 16-bit codes) is saved as an SSLMetaArch teacher
checkpoint; the dataset is the generated demo set with 3 classes x 8 images of 32 px (12 database
images, 12 queries). Results are checked against independent recomputations from the library.
"""

import json
import os
import sys

import faiss
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from dinov2.data import ClassFolderDataset, generate_demo_dataset, make_classification_eval_transform
from dinov2.eval.encode import extract_codes
from dinov2.eval.hashing import (
    binarize,
    hamming_topk,
    mean_average_precision,
    pack_codes_padded,
    precision_at_k,
    unpack_codes,
)
from dinov2.eval.retrieval import tool as retrieval
from dinov2.models import build_hashing_network
from dinov2.models import vision_transformer as vits
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import merge_config

from ...conftest import export_torchrun_env, free_port

TINY_ARCH = "vit_retrieval_test"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_vit(**kwargs):
    kwargs.pop("block_fn", None)
    return vits.DinoVisionTransformer(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, **kwargs)


OPTS = [
    f"student.arch={TINY_ARCH}",
    "student.patch_size=7",
    "student.drop_path_rate=0.0",
    "crops.global_crops_size=28",
    "crops.local_crops_size=14",
    "crops.local_crops_number=2",
    "hash.hash_bit=16",
    "hash.patch_proj_dim=16",
    "dino.head_n_prototypes=32",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=16",
    "ibot.head_n_prototypes=32",
    "ibot.head_hidden_dim=32",
    "ibot.head_bottleneck_dim=16",
    "train.train_ratio=0.5",
    "evaluation.batch_size=5",
    "evaluation.num_workers=0",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def tiny_arch():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
        yield


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_arch):
    """A dataset, a teacher checkpoint and one evaluation run of the tool on them."""
    base = tmp_path_factory.mktemp("retrieval")
    root = generate_demo_dataset(base / "data", num_classes=3, images_per_class=8, image_size=32)
    cfg = merge_config(None, OPTS)
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg)
    weights = str(base / "teacher_checkpoint.pth")
    torch.save({"teacher": meta.teacher.state_dict()}, weights)
    opts = OPTS + [f"train.data_path={root}"]
    out = base / "eval"
    code = retrieval.main(["--weights", weights, "--output-dir", str(out), "--device", "cpu"] + opts)
    assert code == 0
    return {"cfg": cfg, "root": root, "weights": weights, "opts": opts, "out": out, "base": base}


def datasets(cfg, root):
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    return (ClassFolderDataset(root, split, cfg.train.train_ratio, transform=transform) for split in ("train", "query"))


def reference_codes(setting):
    """Codes of both splits computed here, from the checkpoint, without the tool."""
    network = build_hashing_network(setting["cfg"], setting["weights"])
    db, queries = datasets(setting["cfg"], setting["root"])
    d, dl = extract_codes(network, db, 5, 0, torch.device("cpu"), progress=False)
    q, ql = extract_codes(network, queries, 5, 0, torch.device("cpu"), progress=False)
    return binarize(d.numpy()), dl.numpy(), binarize(q.numpy()), ql.numpy()


def test_codes_npz_holds_the_binarised_codes_of_the_network(setting):
    d_ref, dl_ref, q_ref, ql_ref = reference_codes(setting)
    with np.load(setting["out"] / "codes.npz") as data:
        assert int(data["bits"]) == 16 and data["db_codes"].shape == (12, 2) and data["db_codes"].dtype == np.uint8
        np.testing.assert_array_equal(unpack_codes(data["db_codes"], 16), d_ref)
        np.testing.assert_array_equal(unpack_codes(data["query_codes"], 16), q_ref)
        np.testing.assert_array_equal(data["db_labels"], dl_ref)
        np.testing.assert_array_equal(data["query_labels"], ql_ref)
        assert data["class_names"].tolist() == sorted(e.name for e in os.scandir(setting["root"]) if e.is_dir())
        db, queries = datasets(setting["cfg"], setting["root"])
        assert data["db_files"].tolist() == [os.path.relpath(p, db.root) for p, _ in db.samples]
        assert data["query_files"].tolist() == [os.path.relpath(p, queries.root) for p, _ in queries.samples]
        assert str(data["weights"]) == os.path.abspath(setting["weights"])


def test_metrics_json_matches_a_recomputation_from_codes_npz(setting):
    metrics = json.loads((setting["out"] / "metrics.json").read_text())
    with np.load(setting["out"] / "codes.npz") as data:
        d, q = unpack_codes(data["db_codes"], 16), unpack_codes(data["query_codes"], 16)
        dl, ql = data["db_labels"], data["query_labels"]
    assert metrics["mAP"] == pytest.approx(mean_average_precision(q, d, ql, dl), abs=1e-12)
    for k in (1, 5, 10):
        assert metrics[f"P@{k}"] == pytest.approx(precision_at_k(q, d, ql, dl, k=k), abs=1e-12)
    # depths beyond the 12 database images are not reported
    assert "P@50" not in metrics and "mAP@100" not in metrics and "mAP@all" not in metrics
    assert 0.0 <= metrics["mAP_tie_aware"] <= 1.0 and 0.0 <= metrics["precision_radius2"] <= 1.0
    assert (metrics["num_database"], metrics["num_queries"], metrics["num_classes"], metrics["bits"]) == (12, 12, 3, 16)
    assert metrics["weights"] == os.path.abspath(setting["weights"])
    assert metrics["checkpoint_format"] == "sdsh_teacher"
    assert metrics["timing"]["total_s"] > 0


def test_faiss_index_holds_the_database_and_agrees_with_hamming_topk(setting):
    index = faiss.read_index_binary(str(setting["out"] / "database.faissindex"))
    assert index.ntotal == 12 and index.d == 16
    with np.load(setting["out"] / "codes.npz") as data:
        distances, _ = index.search(data["query_codes"], 1)
        d, q = unpack_codes(data["db_codes"], 16), unpack_codes(data["query_codes"], 16)
    expected, _ = hamming_topk(q, d, k=1)
    np.testing.assert_array_equal(distances, expected)


def test_manifest_and_pngs_are_written(setting):
    out = setting["out"]
    manifest = (out / "split_manifest.csv").read_text().splitlines()
    assert manifest[0] == "file,label,class,split" and len(manifest) == 1 + 24
    # awp_heatmaps.png: the default hash head pools with AWP, whose patch weights are drawn over the queries.
    for name in ("pr_curve.png", "precision_at_k.png", "retrieval_grid.png", "awp_heatmaps.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert not [name for name in os.listdir(out) if ".tmp" in name]


def test_grid_queries_are_spread_over_classes():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    assert retrieval.grid_query_indices(labels, 4) == [0, 3, 5, 1]
    assert retrieval.grid_query_indices(labels, 20) == [0, 3, 5, 1, 4, 6, 2, 7]


def test_precision_curve_depths_are_log_spaced_and_bounded():
    depths = retrieval.precision_curve_depths(12)
    assert depths[0] == 1 and depths[-1] == 12 and np.all(np.diff(depths) > 0)
    depths = retrieval.precision_curve_depths(50000)
    assert depths[-1] == 1000 and len(depths) > 20 and np.all(np.diff(depths) > 0)


def query_run(setting, capsys, query, *extra):
    code = retrieval.main(
        ["--weights", setting["weights"], "--output-dir", str(setting["out"]), "--query", str(query), *extra]
        + setting["opts"]
    )
    return code, capsys.readouterr()


def test_query_prints_the_query_itself_first_when_it_is_in_the_database(setting, capsys, monkeypatch):
    db, _ = datasets(setting["cfg"], setting["root"])
    query = db.samples[0][0]

    def no_encoding(*args, **kwargs):
        raise AssertionError("the database codes of codes.npz (same weights and settings) were not reused")

    monkeypatch.setattr(retrieval, "extract_codes", no_encoding)
    code, captured = query_run(setting, capsys, query, "--topk", "3")
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert "codes.npz" in lines[0]
    assert "rank" in lines[1] and "hamming" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 3
    assert rows[0][:3] == ["1", "0", query] and rows[0][3] == db.classes[db.targets[0]]
    assert [int(r[1]) for r in rows] == sorted(int(r[1]) for r in rows)


def test_query_encodes_the_database_when_codes_npz_is_from_other_weights(setting, capsys, tmp_path):
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save({"teacher": SSLMetaArch(setting["cfg"]).teacher.state_dict()}, other)
    db, _ = datasets(setting["cfg"], setting["root"])
    query = db.samples[5][0]
    code = retrieval.main(
        ["--weights", str(other), "--output-dir", str(setting["out"]), "--query", query, "--topk", "12"]
        + setting["opts"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    network = build_hashing_network(setting["cfg"], str(other))
    d, _ = extract_codes(network, db, 5, 0, torch.device("cpu"), progress=False)
    distances = {row.split()[2]: int(row.split()[1]) for row in captured.out.strip().splitlines()[2:]}
    assert "database encoded now" in captured.out.splitlines()[0]
    assert len(distances) == 12 and distances[query] == 0
    # distances printed are those of the other weights' database codes, not the cached ones
    q = binarize(d.numpy())[5:6]
    expected = dict(zip((p for p, _ in db.samples), (q != binarize(d.numpy())).sum(1).tolist()))
    assert distances == expected


def test_missing_weights_file_exits_2_naming_it(setting, capsys, tmp_path):
    missing = tmp_path / "nope.pth"
    code = retrieval.main(["--weights", str(missing), "--output-dir", str(tmp_path / "o")] + setting["opts"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(missing) in err and "Traceback" not in err


def test_weights_required_unless_random_weights(setting, capsys, tmp_path):
    assert retrieval.main(["--output-dir", str(tmp_path / "o")] + setting["opts"]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_config_weights_mismatch_exits_2_naming_file_and_key(setting, capsys, tmp_path):
    opts = [o for o in setting["opts"] if not o.startswith("hash.hash_bit")] + ["hash.hash_bit=32"]
    code = retrieval.main(["--weights", setting["weights"], "--output-dir", str(tmp_path / "o")] + opts)
    err = capsys.readouterr().err
    assert code == 2 and setting["weights"] in err and "hash_head.hash_layer" in err


def test_unknown_config_key_exits_2_naming_it(setting, capsys, tmp_path):
    code = retrieval.main(
        ["--weights", setting["weights"], "--output-dir", str(tmp_path / "o")] + setting["opts"] + ["hash.bitz=3"]
    )
    assert code == 2 and "hash.bitz" in capsys.readouterr().err


def test_missing_query_image_exits_2_naming_it(setting, capsys, tmp_path):
    missing = tmp_path / "missing.png"
    code, captured = query_run(setting, capsys, missing)
    assert code == 2 and str(missing) in captured.err


def test_unreadable_query_image_exits_2_naming_it(setting, capsys, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, captured = query_run(setting, capsys, broken)
    assert code == 2 and str(broken) in captured.err and "query image" in captured.err


def test_a_class_without_query_images_exits_2_naming_it(setting, capsys, tmp_path):
    root = tmp_path / "data"
    for name, count in (("a", 2), ("b", 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(b"")
    opts = [o for o in setting["opts"] if not o.startswith("train.data_path")] + [f"train.data_path={root}"]
    code = retrieval.main(["--weights", setting["weights"], "--output-dir", str(tmp_path / "o")] + opts)
    err = capsys.readouterr().err
    assert code == 2 and "class 'b'" in err and str(root) in err


def test_an_empty_dataset_root_exits_2_naming_it(setting, capsys, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    opts = [o for o in setting["opts"] if not o.startswith("train.data_path")] + [f"train.data_path={root}"]
    code = retrieval.main(["--weights", setting["weights"], "--output-dir", str(tmp_path / "o")] + opts)
    err = capsys.readouterr().err
    assert code == 2 and str(root) in err and "no class folders" in err


def test_random_weights_run_without_plots_on_the_demo_dataset(setting, tmp_path):
    out = tmp_path / "random"
    opts = [o for o in setting["opts"] if not o.startswith("train.data_path")]
    demo = ["train.data_path=demo", "data.demo_classes=3", "data.demo_images_per_class=4", "data.demo_image_size=32"]
    assert retrieval.main(["--random-weights", "--output-dir", str(out), "--no-plots"] + opts + demo) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint_format"] == "random" and metrics["weights"] is None
    assert metrics["num_database"] == 6 and metrics["plots"] == []
    # The demo data lives in the shared cache (SDSH_CACHE, a temporary folder in the tests), not in the output.
    assert not os.path.exists(out / "demo_data") and not os.path.exists(out / "retrieval_grid.png")


def test_help_lists_the_options_and_examples(capsys):
    assert retrieval.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--weights", "--random-weights", "--query", "--topk", "--batch-size", "--device", "--no-plots"):
        assert option in out
    assert "examples:" in out and "python -m dinov2.eval.retrieval" in out


def test_without_faiss_the_index_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    path, note = retrieval.write_faiss_index(str(tmp_path / "db.faissindex"), np.zeros((3, 2), np.uint8), 16)
    assert path is None and "faiss is not installed" in note and not os.listdir(tmp_path)


def _torchrun_worker(rank, world_size, port, argv, result_dir):
    setattr(vits, TINY_ARCH, tiny_vit)
    export_torchrun_env(rank, world_size, port)
    code = retrieval.main(argv)
    with open(os.path.join(result_dir, f"exit_{rank}"), "w") as f:
        f.write(str(code))


def test_two_processes_give_the_codes_and_metrics_of_one(setting, tmp_path):
    """gloo, 2 processes: each encodes half of the images, rank 0 writes results over all of them."""
    out = tmp_path / "two"
    argv = ["--weights", setting["weights"], "--output-dir", str(out), "--no-plots"] + setting["opts"]
    mp.spawn(_torchrun_worker, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"exit_{rank}").read_text() for rank in range(2)] == ["0", "0"]
    metrics = json.loads((out / "metrics.json").read_text())
    single = json.loads((setting["out"] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and (metrics["num_database"], metrics["num_queries"]) == (12, 12)
    assert metrics["mAP"] == single["mAP"]
    with np.load(out / "codes.npz") as two, np.load(setting["out"] / "codes.npz") as one:
        for key in ("db_codes", "query_codes", "db_labels", "query_labels", "db_files", "query_files"):
            np.testing.assert_array_equal(two[key], one[key])


def test_codes_of_any_length_are_packed_for_faiss_without_changing_distances(tmp_path):
    rng = np.random.default_rng(0)
    d, q = rng.choice([-1, 1], size=(9, 12)).astype(np.int8), rng.choice([-1, 1], size=(4, 12)).astype(np.int8)
    packed = pack_codes_padded(d)
    assert packed.shape == (9, 2)
    np.testing.assert_array_equal(unpack_codes(packed, 12), d)
    path, _ = retrieval.write_faiss_index(str(tmp_path / "db.faissindex"), packed, 12)
    distances, indices = faiss.read_index_binary(path).search(pack_codes_padded(q), 9)
    brute = (q[:, None, :] != d[None, :, :]).sum(-1)  # [4, 9] Hamming distances
    np.testing.assert_array_equal(distances, np.take_along_axis(brute, indices, 1))
    np.testing.assert_array_equal(np.sort(brute, 1), distances)


def _self_describing_teacher(setting, path):
    """The setting's teacher, saved as the trainer saves it: with the config of its run."""
    checkpoint = torch.load(setting["weights"], weights_only=True)
    checkpoint["config"] = OmegaConf.to_yaml(setting["cfg"])
    torch.save(checkpoint, path)
    return str(path)


def test_weights_alone_build_the_network_the_checkpoint_was_trained_as(setting, tmp_path, capsys):
    weights = _self_describing_teacher(setting, tmp_path / "teacher_checkpoint.pth")
    # No --config-file and no network option: the 16-bit, 28-px tiny network comes from the checkpoint.
    argv = ["--weights", weights, "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-plots"]
    data = [f"train.data_path={setting['root']}", "train.train_ratio=0.5", "evaluation.num_workers=0"]
    assert retrieval.main(argv + data) == 0
    expected = json.loads((setting["out"] / "metrics.json").read_text())
    found = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert found["mAP"] == expected["mAP"]


def test_a_config_that_disagrees_with_the_checkpoint_is_refused_naming_the_key(setting, tmp_path, capsys):
    weights = _self_describing_teacher(setting, tmp_path / "teacher_checkpoint.pth")
    out = tmp_path / "out"
    argv = ["--weights", weights, "--output-dir", str(out), "--device", "cpu", "hash.hash_bit=32"]
    assert retrieval.main(argv + [f"train.data_path={setting['root']}"]) == 2
    err = capsys.readouterr().err
    assert "hash.hash_bit=32" in err and "hash.hash_bit=16" in err and weights in err
    assert not out.exists()


def test_awp_patch_weights_are_a_grid_per_image_and_none_without_awp():
    import torch

    from dinov2.eval.retrieval.outputs import awp_patch_weights

    class Backbone(torch.nn.Module):
        def forward_features(self, images):
            return {"x_norm_clstoken": images.mean((2, 3)), "x_norm_patchtokens": images.flatten(2).transpose(1, 2)}

    class Head(torch.nn.Module):
        def __init__(self, awp):
            super().__init__()
            self.awp = awp

        def forward(self, cls, patches, view="global"):
            return {"patch_weights": patches.mean(-1).sigmoid() if self.awp else None}

    class Network(torch.nn.Module):
        def __init__(self, awp):
            super().__init__()
            self.backbone, self.hash_head = Backbone(), Head(awp)

    images = torch.randn(2, 3, 4, 4)
    weights = awp_patch_weights(Network(True), images)
    assert weights.shape == (2, 4, 4) and ((weights > 0) & (weights < 1)).all()
    assert awp_patch_weights(Network(False), images) is None
