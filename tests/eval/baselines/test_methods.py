"""Tests of dinov2/eval/baselines: LSH, PCAH, ITQ and Spectral Hashing on small synthetic features."""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from dinov2.eval.baselines.tool import METHODS, BaselineError, fit_baseline, itq_rotation, spectral_modes
from dinov2.eval.hashing import mean_average_precision


def clustered(num_classes=8, per_class=60, dim=32, spread=3.0, noise=1.0, seed=0):
    """Gaussian clusters: features [N, dim] and labels [N], classes interleaved."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)) * spread
    labels = np.tile(np.arange(num_classes), per_class)
    return centres[labels] + rng.standard_normal((len(labels), dim)) * noise, labels


def split(x, y, database_fraction=0.5):
    n = int(len(y) * database_fraction)
    return x[:n], y[:n], x[n:], y[n:]


def baseline_map(method, x, y, bits, seed=0):
    db, db_y, q, q_y = split(x, y)
    model = fit_baseline(method, db, bits, seed=seed)
    return mean_average_precision(model.encode(q), model.encode(db), q_y, db_y)


def load_check_script():
    """scripts/check_baselines.py, which holds the independent ITQ (torch, a separate code path)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts", "check_baselines.py")
    spec = importlib.util.spec_from_file_location("check_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", METHODS)
def test_codes_shape_values_and_determinism(method):
    x, _ = clustered()
    for bits in (8, 16):
        model = fit_baseline(method, x, bits, seed=3)
        codes = model.encode(x[:50])
        assert codes.shape == (50, bits) and codes.dtype == np.int8
        assert set(np.unique(codes).tolist()) <= {-1, 1}
        again = fit_baseline(method, x, bits, seed=3).encode(x[:50])
        np.testing.assert_array_equal(codes, again)
        # torch input, float32, gives the same codes as numpy float64
        from_torch = fit_baseline(method, torch.as_tensor(x, dtype=torch.float64), bits, seed=3)
        np.testing.assert_array_equal(from_torch.encode(torch.as_tensor(x[:50])), codes)


@pytest.mark.parametrize("method", METHODS)
def test_every_bit_is_used(method):
    """No bit is constant over the database (a constant bit would carry nothing)."""
    x, _ = clustered()
    codes = fit_baseline(method, x, 16).encode(x)
    assert (np.abs(codes.mean(axis=0)) < 1).all()


def test_seed_changes_random_methods_only():
    x, _ = clustered()
    for method in ("lsh", "itq"):
        a = fit_baseline(method, x, 16, seed=0).encode(x)
        b = fit_baseline(method, x, 16, seed=1).encode(x)
        assert not np.array_equal(a, b), method
    for method in ("pcah", "sh"):
        np.testing.assert_array_equal(fit_baseline(method, x, 16, seed=0).encode(x), fit_baseline(method, x, 16, seed=1).encode(x))


def test_encode_of_zero_projection_is_plus_one():
    x, _ = clustered()
    model = fit_baseline("pcah", x, 4)
    # The database mean projects to exactly 0 on every direction.
    np.testing.assert_array_equal(model.encode(model.mean[None]), np.ones((1, 4), dtype=np.int8))


def test_pcah_takes_the_leading_principal_axes():
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 5.0, 0.2, 3.0])
    # Centred orthogonal columns: the covariance is exactly diag(scales^2), the principal axes the coordinates.
    z = rng.standard_normal((2000, 4))
    q, _ = np.linalg.qr(z - z.mean(axis=0))
    x = q * scales * math.sqrt(2000) + 7.0
    model = fit_baseline("pcah", x, 2)
    # Axes 1 then 3 carry the most variance; each direction's largest component is positive.
    np.testing.assert_allclose(model.projection, np.eye(4)[:, [1, 3]], atol=1e-9)
    np.testing.assert_array_equal(model.encode(x), np.where(x[:, [1, 3]] - model.mean[[1, 3]] >= 0, 1, -1))


def test_itq_loss_never_increases_and_rotation_is_orthogonal():
    x, _ = clustered(dim=24)
    model = fit_baseline("itq", x, 16, seed=5)
    losses = np.asarray(model.quantization_losses)
    assert len(losses) == 51
    assert (np.diff(losses) <= 1e-9 * losses[0]).all()
    assert losses[-1] < losses[0]
    # projection = PCA directions @ R, both with orthonormal columns
    gram = model.projection.T @ model.projection
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-10)


def test_itq_rotation_reaches_a_hypercube_vertex_configuration():
    """Points already on rotated cube vertices: ITQ finds a rotation with almost no quantization loss."""
    rng = np.random.default_rng(0)
    vertices = np.where(rng.random((400, 4)) < 0.5, -1.0, 1.0)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    _, losses = itq_rotation(vertices @ q.T, iterations=50, rng=np.random.default_rng(1))
    assert losses[-1] < 1e-6 * losses[0] or losses[-1] < 1e-8


def test_itq_beats_lsh_on_clustered_data():
    x, y = clustered(num_classes=10, per_class=60, dim=64, spread=3.0, noise=2.0)
    for bits in (16, 32):
        itq = baseline_map("itq", x, y, bits)
        lsh = np.mean([baseline_map("lsh", x, y, bits, seed=s) for s in range(3)])
        assert itq > lsh + 0.05, (bits, itq, lsh)


def test_itq_matches_an_independent_itq():
    x, y = clustered(num_classes=10, per_class=60, dim=64, spread=2.0, noise=2.0, seed=4)
    db, db_y, q, q_y = split(x, y)
    for bits in (16, 32):
        ours = baseline_map("itq", x, y, bits)
        ref_db, ref_q = load_check_script().independent_itq(db, q, bits)
        ref = mean_average_precision(ref_q, ref_db, q_y, db_y)
        assert abs(ours - ref) < 0.02, (bits, ours, ref)


def test_itq_on_held_out_real_digits():
    """scikit-learn's bundled 8x8 digits (real handwriting): ITQ = independent ITQ within 0.02, above LSH."""
    pytest.importorskip("sklearn")
    check = load_check_script()
    db, db_y, q, q_y = check.digits_set()
    assert len(db) + len(q) == 1797 and set(db_y.tolist()) == set(range(10))
    for bits in (16, 32, 64):
        s = check.score(db, db_y, q, q_y, bits, lsh_seeds=3)
        assert abs(s["itq"] - s["itq_independent"]) < 0.02, (bits, s)
        assert s["itq"] > s["lsh_max"], (bits, s)


def test_spectral_modes_are_the_analytically_smallest():
    # Widths 2.5 and 1: (m / w)^2 = 0.16, 0.64, 1.44, 2.56, 4 ... along 0 and 1, 4, 9 ... along 1.
    modes, eigenvalues = spectral_modes([2.5, 1.0], 5)
    assert modes.tolist() == [[0, 1], [0, 2], [1, 1], [0, 3], [0, 4]]
    np.testing.assert_allclose(eigenvalues, (np.array([1, 2, 2.5, 3, 4]) * math.pi / 2.5) ** 2)
    # against a brute-force enumeration for random widths
    rng = np.random.default_rng(0)
    widths = rng.uniform(0.5, 3.0, 6)
    candidates = sorted(((m / widths[k]) ** 2, k, m) for k in range(6) for m in range(1, 40))
    modes, _ = spectral_modes(widths, 20)
    assert modes.tolist() == [[k, m] for _, k, m in candidates[:20]]


def test_spectral_hashing_on_a_known_uniform_grid():
    # A 2-D grid, uniform on [0, 2.5] x [0, 1]: its principal axes are the coordinate axes.
    u, v = np.meshgrid(np.linspace(0.0, 2.5, 51), np.linspace(0.0, 1.0, 21), indexing="ij")
    x = np.stack([u.ravel(), v.ravel()], axis=1)
    model = fit_baseline("sh", x, 5)
    assert model.modes.tolist() == [[0, 1], [0, 2], [1, 1], [0, 3], [0, 4]]
    np.testing.assert_allclose(model.high - model.low, [2.5, 1.0], atol=1e-9)
    # Bit of mode (k, m) = sign(cos(m pi (x_k - a_k) / w_k)), with x_k measured from the range start.
    expected = np.stack(
        [np.cos(m * math.pi * (x[:, k] - x[:, k].min()) / (2.5, 1.0)[k]) for k, m in model.modes], axis=1
    )
    codes = model.encode(x)
    away_from_zero = np.abs(expected) > 1e-6
    np.testing.assert_array_equal(codes[away_from_zero], np.where(expected >= 0, 1, -1)[away_from_zero])
    # the first bit splits the long axis in half: x < 1.25 -> +1
    assert (codes[x[:, 0] < 1.2, 0] == 1).all() and (codes[x[:, 0] > 1.3, 0] == -1).all()


def test_lsh_allows_more_bits_than_dimensions():
    x, _ = clustered(dim=8)
    assert fit_baseline("lsh", x, 32).encode(x).shape == (len(x), 32)
    assert fit_baseline("sh", x, 32).encode(x).shape == (len(x), 32)


@pytest.mark.parametrize("method", ["pcah", "itq"])
def test_too_many_bits_for_pca_methods(method):
    x, _ = clustered(dim=8)
    with pytest.raises(BaselineError, match=r"bits=16 is larger than the feature dimension 8"):
        fit_baseline(method, x, 16)


def test_error_cases_name_the_value():
    x, _ = clustered(dim=8)
    with pytest.raises(BaselineError, match="unknown baseline method 'kmeans'.*lsh, pcah, itq, sh"):
        fit_baseline("kmeans", x, 8)
    for bits in (0, -4, 2.5, True):
        with pytest.raises(BaselineError, match=f"bits must be a positive integer, got {bits!r}"):
            fit_baseline("lsh", x, bits)
    with pytest.raises(BaselineError, match=r"empty \(shape \(0, 8\)\)"):
        fit_baseline("itq", np.zeros((0, 8)), 4)
    with pytest.raises(BaselineError, match="2-D"):
        fit_baseline("itq", np.zeros(8), 4)
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(BaselineError, match=r"NaN or inf values, in 2 row\(s\): 3, 7"):
        fit_baseline("sh", bad, 4)
    model = fit_baseline("lsh", x, 4)
    with pytest.raises(BaselineError, match="dimension 5 but the lsh baseline was fitted on dimension 8"):
        model.encode(np.zeros((2, 5)))
    with pytest.raises(BaselineError, match="NaN"):
        model.encode(bad)
