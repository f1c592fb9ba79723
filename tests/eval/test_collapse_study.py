"""scripts/collapse_study.py: its image sets are built in code, deterministic and one folder per class."""

import hashlib
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("collapse_study", os.path.join(REPO, "scripts", "collapse_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.mark.parametrize("name,classes,per_class", [("lowcontrast", 10, 40), ("phototiles", 8, 50), ("gratings", 6, 60)])
def test_sets_are_class_folders_of_64px_images_built_deterministically(study, tmp_path, name, classes, per_class):
    path = study.build_set(name, str(tmp_path / "a"), seed=0)
    folders = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    assert len(folders) == classes
    assert all(len(os.listdir(os.path.join(path, d))) == per_class for d in folders)
    image = Image.open(os.path.join(path, folders[0], "0000.png"))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert digest(path) == digest(study.build_set(name, str(tmp_path / "b"), seed=0))
    # Classes differ on average more than images within a class (the sets are learnable from pixels).
    means = [
        np.mean([np.asarray(Image.open(os.path.join(path, d, f"{i:04d}.png")), dtype=np.float64) for i in range(8)], axis=0)
        for d in folders[:2]
    ]
    assert np.abs(means[0] - means[1]).mean() > 0.1


def test_lowcontrast_images_have_low_contrast(study, tmp_path):
    path = study.build_set("lowcontrast", str(tmp_path), seed=0)
    pixels = np.asarray(Image.open(os.path.join(path, "class_00", "0000.png")), dtype=np.float64) / 255
    assert pixels.std() < 0.05 and np.allclose(pixels[..., 0], pixels[..., 2])


def test_help_and_unknown_set(study, capsys):
    with pytest.raises(SystemExit) as info:
        study.main(["--help"])
    assert info.value.code == 0 and "--iterations" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study.main(["--sets", "nosuchset"])
    assert "unknown set(s) nosuchset" in capsys.readouterr().err


def _result(entropy):
    evaluation = {"mAP": 0.5, "mAP_tie_aware": 0.45, "num_database": 20, "distinct_codes": 18, "collapse": "ok",
                  "largest_bucket_fraction": 0.1}  # fmt: skip
    itq = {"mAP_tie_aware": 0.4, "distinct_codes": 9, "largest_bucket_fraction": 0.25, "collapse": "partial"}
    return {
        "classes": 2,
        "sdsh": {"best": evaluation, "last": evaluation, "random_codes_tie_aware": 0.5, "dino_target_entropy": entropy},
        "baselines": {"lsh": {"mAP_tie_aware": 0.3, "collapse": "ok"}, "itq": itq},
    }


def test_table_row_marks_uniform_dino_targets(study):
    header_columns = study.TABLE_HEADER.splitlines()[0].count("|") - 1
    for entropy, cell in ((0.99937, "0.9994 (uniform)"), (0.85712, "0.8571"), (None, "-")):
        row = study.table_row("s", _result(entropy))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == header_columns
        assert cells[-1] == cell
        assert cells[2] == "0.500 (0.450)" and cells[4] == "18 / 10.0% (ok)"
        # A baseline's codes are shown only when the collapse rule flags them.
        assert cells[6] == "0.300" and cells[7] == "0.400 (9 / 25.0% (partial))"
