"""BinaryIndex: exact k-NN (flat and multi-index hashing) against a stable brute force and faiss; file format."""

import os
import struct

import numpy as np
import pytest

from dinov2.eval.hashing import pack_codes
from dinov2.search import kernels as index_kernels
from dinov2.search.index import HEADER_SIZE, BinaryIndex, IndexFormatError, default_mih_tables

pytest.importorskip("numba")


def stable_brute_force(queries, codes, k):
    """All distances from the unpacked bits, a stable argsort, the first k."""
    qb = np.unpackbits(queries, axis=1)
    cb = np.unpackbits(codes, axis=1)
    dist = np.stack([(row[None, :] != cb).sum(1) for row in qb])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def random_codes(rng, n, nbits):
    return rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)


def clustered_codes(rng, n, nbits, centers=20, flip=0.05, duplicates=0.3):
    """Codes near a few centres, a share of them exact copies of a centre (many equal distances)."""
    base = rng.integers(0, 2, (centers, nbits), dtype=np.uint8)
    labels = rng.integers(0, centers, n)
    noise = (rng.random((n, nbits)) < flip).astype(np.uint8)
    noise[rng.random(n) < duplicates] = 0
    return np.packbits(base[labels] ^ noise, axis=1, bitorder="little")


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("mode", ["flat", "mih"])
def test_random_20k_equals_stable_brute_force_and_faiss(rng, mode):
    codes = random_codes(rng, 20_000, 64)
    queries = np.concatenate([random_codes(rng, 12, 64), codes[[5, 17, 19_999]]])
    index = BinaryIndex(64, mode)
    index.add(codes)
    dist, ids = index.search(queries, 50)
    assert dist.dtype == np.int32 and ids.dtype == np.int64 and dist.shape == ids.shape == (15, 50)
    ref_dist, ref_ids = stable_brute_force(queries, codes, 50)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    # an indexed code finds itself first
    np.testing.assert_array_equal(ids[-3:, 0], [5, 17, 19_999])
    faiss = pytest.importorskip("faiss")
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    faiss_dist, _ = flat.search(queries, 50)
    np.testing.assert_array_equal(dist, faiss_dist)


@pytest.mark.parametrize("nbits", [16, 32, 48, 64, 128, 256])
def test_flat_kernels_of_every_word_layout_equal_stable_brute_force_with_ties(rng, nbits):
    # 64 and 128 bits take the one- and two-word kernels (an odd number of queries exercises the
    # pair kernel's last query); the other widths take the blocked generic kernel.
    codes = clustered_codes(rng, 3_000, nbits)
    queries = np.concatenate([clustered_codes(rng, 6, nbits), codes[[0, 2_999]]])[:7]
    index = BinaryIndex(nbits, "flat")
    index.add(codes)
    for k in (1, 37, 3_000):
        dist, ids = index.search(queries, k)
        ref_dist, ref_ids = stable_brute_force(queries, codes, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(dist, ref_dist)


@pytest.mark.parametrize("nbits", [64, 128, 24])
@pytest.mark.parametrize("tables", ["default", "fewest", "many"])
def test_mih_equals_flat_with_many_ties(rng, nbits, tables):
    tables = {"default": None, "fewest": -(-nbits // 20), "many": nbits // 4}[tables]
    codes = clustered_codes(rng, 6000, nbits)
    queries = np.concatenate([clustered_codes(rng, 20, nbits), random_codes(rng, 4, nbits), codes[:3]])
    flat = BinaryIndex(nbits, "flat")
    flat.add(codes)
    mih = BinaryIndex(nbits, "mih", mih_tables=tables)
    mih.add(codes)
    for k in (300, 10, 1):
        f_dist, f_ids = flat.search(queries, k)
        m_dist, m_ids, probed = mih.search(queries, k, return_probed=True)
        np.testing.assert_array_equal(m_dist, f_dist)
        np.testing.assert_array_equal(m_ids, f_ids)
        if k == 300:
            ref_dist, ref_ids = stable_brute_force(queries, codes, 300)
            np.testing.assert_array_equal(f_ids, ref_ids)
            np.testing.assert_array_equal(f_dist, ref_dist)
    # an indexed code's nearest neighbour (itself, distance 0) is certain after one table lookup
    assert (m_dist[-3:, 0] == 0).all() and probed[-3:].max() < len(codes) // 4


def test_large_k_two_scan_kernel_equals_buckets(rng, monkeypatch):
    codes = clustered_codes(rng, 3000, 64)
    queries = codes[:7]
    index = BinaryIndex(64, "flat")
    index.add(codes)
    dist, ids = index.search(queries, 3000)
    monkeypatch.setattr(index_kernels, "BUCKET_BYTES", 0)
    dist2, ids2 = index.search(queries, 3000)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(dist, dist2)
    ref_dist, ref_ids = stable_brute_force(queries, codes, 3000)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)


def test_adds_in_pieces_and_auto_mode(rng):
    codes = clustered_codes(rng, 2000, 64)
    whole = BinaryIndex(64, "flat")
    whole.add(codes)
    pieces = BinaryIndex(64, "auto", auto_threshold=1500)
    pieces.add(codes[:1000])
    assert pieces.resolved_mode() == "flat"
    queries = codes[::97]
    before = pieces.search(queries, 5)
    np.testing.assert_array_equal(before[1], stable_brute_force(queries, codes[:1000], 5)[1])
    pieces.add(codes[1000:1700])
    pieces.add(codes[1700:])
    assert pieces.resolved_mode() == "mih" and pieces.ntotal == len(pieces) == 2000
    np.testing.assert_array_equal(pieces.codes, codes)
    for a, b in zip(pieces.search(queries, 40), whole.search(queries, 40)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("times, expected", [((0.0, 1.0, 0.0, 5.0), "flat"), ((0.0, 5.0, 0.0, 1.0), "mih")])
def test_auto_keeps_the_mode_its_first_search_measured_faster_until_the_next_add(rng, monkeypatch, times, expected):
    import dinov2.search.index as index_module

    codes = random_codes(rng, 3000, 64)
    index = BinaryIndex(64, "auto", auto_threshold=2000)
    index.add(codes[:2500])
    assert index.resolved_mode() == "mih"  # not measured yet
    clock = iter(times)
    monkeypatch.setattr(index_module.time, "perf_counter", lambda: next(clock))
    queries = codes[:20]
    dist, ids = index.search(queries, 30)
    assert index.resolved_mode() == expected and (index._tables is None) == (expected == "flat")
    ref_dist, ref_ids = stable_brute_force(queries, codes[:2500], 30)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    index.search(queries, 30)  # no second measurement: the fake clock would be exhausted
    index.add(codes[2500:])
    assert index.resolved_mode() == "mih"  # more codes: measured again at the next search
    monkeypatch.setattr(index_module.time, "perf_counter", lambda: 0.0)
    np.testing.assert_array_equal(index.search(queries, 30)[1], stable_brute_force(queries, codes, 30)[1])


def test_pack_codes_layout_is_accepted(rng):
    signs = np.where(rng.random((50, 32)) < 0.5, -1, 1)
    packed = pack_codes(signs)
    index = BinaryIndex(32, "flat")
    index.add(packed)
    dist, _ = index.search(packed[:3], 50)
    expected = np.sort((signs[:3, None, :] != signs[None, :, :]).sum(-1), axis=1)
    np.testing.assert_array_equal(dist, expected)


def test_memory_is_the_packed_codes(rng):
    index = BinaryIndex(128, "flat")
    index.reserve(10_000)
    index.add(random_codes(rng, 10_000, 128))
    assert index.memory_bytes() == 10_000 * 16


def test_default_tables_keep_substrings_short():
    assert default_mih_tables(64, 2**16) == 4
    assert default_mih_tables(128, 10**7) >= 7
    assert 128 / default_mih_tables(128, 2) <= 20


# ---- file format


def test_save_load_round_trip(rng, tmp_path):
    codes = clustered_codes(rng, 3000, 128)
    index = BinaryIndex(128, "mih", mih_tables=8, auto_threshold=77)
    index.add(codes)
    path = str(tmp_path / "db.sdshidx")
    index.save(path)
    assert os.path.getsize(path) == HEADER_SIZE + codes.nbytes
    for mmap in (False, True):
        loaded = BinaryIndex.load(path, mmap=mmap)
        assert (loaded.nbits, loaded.mode, loaded.mih_tables, loaded.auto_threshold) == (128, "mih", 8, 77)
        np.testing.assert_array_equal(loaded.codes, codes)
        for a, b in zip(loaded.search(codes[:9], 20), index.search(codes[:9], 20)):
            np.testing.assert_array_equal(a, b)
    # a memory-mapped index grows by copying, the file stays as it was
    loaded.add(codes[:5])
    assert loaded.ntotal == 3005 and os.path.getsize(path) == HEADER_SIZE + codes.nbytes
    empty = BinaryIndex(16)
    empty.save(str(tmp_path / "empty.idx"))
    assert BinaryIndex.load(str(tmp_path / "empty.idx")).ntotal == 0


def _saved(rng, tmp_path):
    index = BinaryIndex(64, "flat")
    index.add(random_codes(rng, 100, 64))
    path = str(tmp_path / "x.idx")
    index.save(path)
    with open(path, "rb") as f:
        return path, bytearray(f.read())


def _write(path, data):
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: HEADER_SIZE + 100], "truncated"),
        (lambda b: b[:30], "truncated header"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b"NOTANIDX" + b[8:], "magic"),
        (lambda b: b[:8] + struct.pack("<I", 9) + b[12:], "version 9"),
        (lambda b: b[:20] + struct.pack("<I", 1) + b[24:], "corrupt header"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "corrupt codes"),
        (lambda b: b"", "magic"),
    ],
)
def test_damaged_files_are_refused_by_name(rng, tmp_path, damage, message):
    path, data = _saved(rng, tmp_path)
    _write(path, damage(data))
    with pytest.raises(IndexFormatError, match=message) as info:
        BinaryIndex.load(path)
    assert path in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.idx"):
        BinaryIndex.load(str(tmp_path / "nothere.idx"))


def test_save_replaces_atomically(rng, tmp_path):
    path, _ = _saved(rng, tmp_path)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []
    assert BinaryIndex.load(path).ntotal == 100


# ---- bad input


def test_bad_inputs_get_clear_errors(rng):
    with pytest.raises(ValueError, match="multiple of 8"):
        BinaryIndex(12)
    with pytest.raises(ValueError, match="mode"):
        BinaryIndex(64, "fast")
    with pytest.raises(ValueError, match="mih_tables"):
        BinaryIndex(64, "mih", mih_tables=0)
    index = BinaryIndex(64)
    with pytest.raises(ValueError, match="empty"):
        index.search(random_codes(rng, 1, 64), 1)
    with pytest.raises(ValueError, match="uint8"):
        index.add(np.zeros((3, 8), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        index.add(np.zeros((3, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        index.add(np.zeros(8, dtype=np.uint8))
    index.add(random_codes(rng, 10, 64))
    queries = random_codes(rng, 2, 64)
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(queries, k)
    with pytest.raises(ValueError, match="exceeds the number of indexed codes"):
        index.search(queries, 11)
    with pytest.raises(ValueError, match="queries"):
        index.search(np.zeros((2, 4), dtype=np.uint8), 1)
    assert index.search(queries, 10)[1].shape == (2, 10)
