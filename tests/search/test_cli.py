"""Tests of the archive index command line (dinov2/search build/search): in-process on the small
demo teacher of tests/eval/conftest.py, and the real command line in subprocesses."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch.multiprocessing as mp

from dinov2.search import archive as index_archive
from dinov2.search import cli as index_cli
from dinov2.search.index import BinaryIndex

from ..conftest import export_torchrun_env, free_port
from ..reliability.conftest import PYTHON, subprocess_env
from .conftest import CHUNK_SIZE, INDEX_OPTS, build_argv, files_of, reference_packed_codes, save_teacher

# The command line as users run it: python -m dinov2.search
INDEX_COMMAND = ["-m", "dinov2.search"]


def stable_ranking(codes: np.ndarray, query: np.ndarray):
    """Hamming distances of one packed query to all codes from the unpacked bits; order (distance, id)."""
    bits = np.unpackbits(codes, axis=1)
    distances = (bits != np.unpackbits(query[None], axis=1)).sum(1)
    order = np.argsort(distances, kind="stable")
    return distances[order], order


def records_of(index_dir):
    return [json.loads(line) for line in (index_dir / "files.jsonl").read_text().splitlines()]


def indexed_image(archive, image_id: int) -> str:
    return os.path.join(archive["images"], records_of(archive["index"])[image_id]["path"])


def search(index_dir, image, *extra, capsys):
    code = index_cli.main(["search", "--index", str(index_dir), "--image", str(image), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    return code, captured


def test_build_writes_the_codes_of_every_image_and_a_record_per_id(archive):
    index_dir = archive["index"]
    names = sorted(os.listdir(index_dir))
    assert names == ["chunks", "files.jsonl", "fingerprint.json", "index.sdshbix", "meta.json"]
    assert sorted(os.listdir(index_dir / "chunks")) == [f"chunk_{i:06d}.npy" for i in range(3)]
    expected = reference_packed_codes(archive["weights"], archive["images"])
    index = BinaryIndex.load(index_dir / "index.sdshbix")
    np.testing.assert_array_equal(index.codes, expected)
    assert len(np.unique(expected, axis=0)) > 3  # the codes tell the images apart, so ranking tests can fail
    meta = json.loads((index_dir / "meta.json").read_text())
    assert (meta["count"], meta["nbits"], meta["index_nbits"], meta["chunk_size"]) == (12, 16, 16, CHUNK_SIZE)
    assert meta["weights"] == os.path.abspath(archive["weights"])
    assert meta["image_root"] == os.path.abspath(archive["images"])
    assert meta["config"]["student"]["arch"] == "vit_demo" and meta["format_version"] == 1
    records = records_of(index_dir)
    classes = sorted(c for c in os.listdir(archive["images"]) if not c.startswith("."))
    assert [r["id"] for r in records] == list(range(12))
    expected_paths = [f"{c}/{f}" for c in classes for f in sorted(os.listdir(os.path.join(archive["images"], c)))]
    assert [r["path"] for r in records] == expected_paths
    assert all(r["labels"] == [r["path"].split("/")[0]] for r in records)


@pytest.mark.parametrize("image_id", [0, 6, 11])
def test_search_finds_the_query_image_itself_at_distance_0(archive, capsys, image_id):
    records = records_of(archive["index"])
    query = indexed_image(archive, image_id)
    code, captured = search(archive["index"], query, "-k", "12", "--json", capsys=capsys)
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    results = payload["results"]
    assert payload["k"] == 12 and payload["nbits"] == 16 and len(results) == 12
    codes = reference_packed_codes(archive["weights"], archive["images"])
    distances, order = stable_ranking(codes, codes[image_id])
    assert [r["id"] for r in results] == order.tolist()
    assert [r["distance"] for r in results] == distances.tolist()
    assert results[0]["distance"] == 0
    itself = next(r for r in results if r["id"] == image_id)
    assert itself["distance"] == 0 and itself["path"] == records[image_id]["path"]
    assert itself["labels"] == records[image_id]["labels"]
    if not (codes[:image_id] == codes[image_id]).all(axis=1).any():  # no earlier id with the same code
        assert results[0]["id"] == image_id


def test_search_prints_a_table_of_rank_distance_path_labels(archive, capsys):
    records = records_of(archive["index"])
    query = indexed_image(archive, 0)
    code, captured = search(archive["index"], query, "-k", "3", capsys=capsys)
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert "16 bits" in lines[0] and "12 indexed images" in lines[0]
    assert lines[1].split() == ["rank", "hamming", "path", "labels"]
    first = lines[2].split()
    assert first == ["1", "0", records[0]["path"], records[0]["labels"][0]] and len(lines) == 5


def test_resume_encodes_only_the_missing_chunks_and_gives_the_same_bytes(archive, tmp_path, monkeypatch):
    resumed = tmp_path / "index"
    shutil.copytree(archive["index"], resumed)
    # An interrupted build: the last chunk and everything after the chunks are missing.
    for name in ("meta.json", "index.sdshbix", "files.jsonl", os.path.join("chunks", "chunk_000002.npy")):
        os.remove(resumed / name)
    encoded = []
    real = index_archive.extract_codes

    def counting(network, dataset, *args, **kwargs):
        encoded.append(len(dataset))
        return real(network, dataset, *args, **kwargs)

    monkeypatch.setattr(index_archive, "extract_codes", counting)
    assert index_cli.main(build_argv(archive["weights"], archive["images"], resumed)) == 0
    assert encoded == [2]  # the 12 - 2 * CHUNK_SIZE images of the last chunk only
    assert files_of(resumed) == files_of(archive["index"])


def test_a_complete_index_is_rebuilt_without_encoding(archive, tmp_path, monkeypatch):
    again = tmp_path / "index"
    shutil.copytree(archive["index"], again)
    monkeypatch.setattr(index_archive, "extract_codes", pytest.fail)
    assert index_cli.main(build_argv(archive["weights"], archive["images"], again)) == 0
    assert files_of(again) == files_of(archive["index"])


def test_other_weights_are_refused_unless_overwrite(archive, tmp_path, capsys):
    target = tmp_path / "index"
    shutil.copytree(archive["index"], target)
    before = files_of(target)
    other = save_teacher(tmp_path / "other.pth", seed=1)
    assert index_cli.main(build_argv(other, archive["images"], target)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and "weights" in err and "--overwrite" in err
    assert files_of(target) == before  # nothing touched

    assert index_cli.main(build_argv(other, archive["images"], target, "--overwrite")) == 0
    index = BinaryIndex.load(target / "index.sdshbix")
    np.testing.assert_array_equal(index.codes, reference_packed_codes(other, archive["images"]))
    assert json.loads((target / "meta.json").read_text())["weights"] == os.path.abspath(other)


def test_another_image_set_is_refused_naming_the_image_list(archive, tmp_path, capsys):
    target = tmp_path / "index"
    shutil.copytree(archive["index"], target)
    images = tmp_path / "images"
    shutil.copytree(archive["images"], images)
    first = sorted(p for p in os.listdir(images) if not p.startswith("."))[0]
    victim = sorted(os.listdir(images / first))[0]
    os.remove(images / first / victim)
    assert index_cli.main(build_argv(archive["weights"], images, target)) == 2
    err = capsys.readouterr().err
    assert "image_list_sha256" in err and "image_root" in err


def test_missing_weights_exit_2_before_anything_is_written(archive, tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert index_cli.main(build_argv(missing, archive["images"], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_named_before_anything_is_written(archive, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(archive["images"], images)
    first = sorted(p for p in os.listdir(images) if not p.startswith("."))[0]
    broken = images / first / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert index_cli.main(build_argv(archive["weights"], images, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    assert not (tmp_path / "out").exists()


def test_an_empty_image_folder_exits_2_naming_it(archive, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert index_cli.main(build_argv(archive["weights"], empty, tmp_path / "out")) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unfinished_index_is_refused_by_search(archive, tmp_path, capsys):
    target = tmp_path / "index"
    shutil.copytree(archive["index"], target)
    os.remove(target / "meta.json")
    code, captured = search(target, indexed_image(archive, 0), capsys=capsys)
    assert code == 2 and "meta.json" in captured.err and "did not finish" in captured.err


def test_a_garbage_query_image_exits_2_naming_it(archive, tmp_path, capsys):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    code, captured = search(archive["index"], garbage, capsys=capsys)
    assert code == 2 and str(garbage) in captured.err and "query image" in captured.err


def _torchrun_worker(rank, world_size, port, argv, result_dir):
    export_torchrun_env(rank, world_size, port)
    code = index_cli.main(argv)
    with open(os.path.join(result_dir, f"exit_{rank}"), "w") as f:
        f.write(str(code))


def test_two_processes_build_the_same_index_as_one(archive, tmp_path):
    """gloo, 2 processes: rank 0 encodes chunks 0 and 2, rank 1 chunk 1, rank 0 merges."""
    out = tmp_path / "two"
    argv = build_argv(archive["weights"], archive["images"], out)
    mp.spawn(_torchrun_worker, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"exit_{rank}").read_text() for rank in range(2)] == ["0", "0"]
    one, two = files_of(archive["index"]), files_of(out)
    assert sorted(one) == sorted(two)
    for name in ("index.sdshbix", "files.jsonl", "fingerprint.json") + tuple(n for n in one if n.startswith("chunks")):
        assert two[name] == one[name], name


def run_script(*argv):
    return subprocess.run(
        [PYTHON, *INDEX_COMMAND, *argv], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )


def test_the_command_line_builds_and_searches(archive, tmp_path):
    """``python -m dinov2.search`` as a script: its __main__ block, imports and exit status."""
    out = tmp_path / "index"
    result = run_script(*build_argv(archive["weights"], archive["images"], out))
    assert result.returncode == 0, result.stderr
    assert files_of(out)["index.sdshbix"] == files_of(archive["index"])["index.sdshbix"]
    query = indexed_image(archive, 0)
    result = run_script("search", "--index", str(out), "--image", query, "-k", "2", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["results"][0]["id"] == 0 and payload["results"][0]["distance"] == 0


def test_the_command_line_help_and_errors(tmp_path):
    result = run_script("--help")
    assert result.returncode == 0 and "examples:" in result.stdout
    for command in ("build", "search", "serve"):
        assert command in result.stdout
    result = run_script("build", "--help")
    for option in ("--weights", "--images", "--output-dir", "--config-file", "--batch-size", "--overwrite"):
        assert option in result.stdout
    missing = tmp_path / "nope.pth"
    result = run_script(
        "build", "--weights", str(missing), "--images", str(tmp_path), "--output-dir", str(tmp_path / "o"), *INDEX_OPTS
    )
    assert result.returncode == 2 and str(missing) in result.stderr and "Traceback" not in result.stderr


def test_an_image_list_with_several_labels_and_a_path_outside_its_folder_is_indexed(archive, tmp_path, capsys):
    # Lines name images relative to the list, and one by an absolute path elsewhere on disk.
    source = records_of(archive["index"])
    folder = tmp_path / "list"
    folder.mkdir()
    lines = []
    for i, record in enumerate(source[:6]):
        src = os.path.join(archive["images"], record["path"])
        if i == 5:
            lines.append(f"{src},outside")
            continue
        shutil.copy(src, folder / f"tile_{i}.png")
        lines.append(f"tile_{i}.png,{record['labels'][0]};common")
    list_file = folder / "tiles.csv"
    list_file.write_text("path,labels\n" + "\n".join(lines) + "\n")
    out = tmp_path / "index"
    assert index_cli.main(build_argv(archive["weights"], list_file, out)) == 0, capsys.readouterr().err
    records = records_of(out)
    assert [r["path"] for r in records[:5]] == [f"tile_{i}.png" for i in range(5)]
    assert records[5]["path"] == os.path.join(archive["images"], source[5]["path"])
    assert records[0]["labels"] == [source[0]["labels"][0], "common"]  # in the order of the line
    assert records[5]["labels"] == ["outside"]
    # The same pixels give the same codes as in the class-folder index.
    np.testing.assert_array_equal(
        BinaryIndex.load(out / "index.sdshbix").codes, BinaryIndex.load(archive["index"] / "index.sdshbix").codes[:6]
    )
    searcher = index_archive.ArchiveSearcher(str(out), device="cpu")
    assert searcher.image_path(5) == os.path.join(archive["images"], source[5]["path"])
    assert searcher.image_path(2) == str(folder / "tile_2.png")


def test_an_unlabeled_folder_tree_is_indexed_with_empty_labels(archive, tmp_path, capsys):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    source = records_of(archive["index"])
    shutil.copy(os.path.join(archive["images"], source[0]["path"]), tree / "top.png")
    shutil.copy(os.path.join(archive["images"], source[7]["path"]), tree / "a" / "b" / "deep.png")
    out = tmp_path / "index"
    assert index_cli.main(build_argv(archive["weights"], tree, out)) == 0, capsys.readouterr().err
    records = records_of(out)
    assert sorted(r["path"] for r in records) == ["a/b/deep.png", "top.png"]
    assert all(r["labels"] == [] for r in records)
    capsys.readouterr()  # the build's own output
    code, captured = search(out, tree / "top.png", "-k", "1", "--json", capsys=capsys)
    assert code == 0 and json.loads(captured.out)["results"][0]["path"] == "top.png"


def test_a_bad_image_list_line_exits_2_naming_the_file_and_line(archive, tmp_path, capsys):
    source = records_of(archive["index"])
    shutil.copy(os.path.join(archive["images"], source[0]["path"]), tmp_path / "a.png")
    list_file = tmp_path / "tiles.csv"
    for text, where in (("a.png,x\na.png\n", "line 2"), ("gone.png,x\n", "line 1")):
        list_file.write_text(text)
        assert index_cli.main(build_argv(archive["weights"], list_file, tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert str(list_file) in err and "image list" in err and where in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
