"""The text-embedding cache: bounded LRU, thread safety, on-disk store across restarts."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import threading
import warnings

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.text_cache import DiskStore, TextCache, prompt_key


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


class CountingForward:
    """Wraps an engine's text forward and records how many prompts each call encodes."""

    def __init__(self, engine, fail: bool = False):
        self.engine, self.fail, self.calls = engine, fail, []
        self.original = engine._text_forward

    def __enter__(self):
        def forward(ids, mask):
            self.calls.append(ids.shape[0])
            if self.fail:
                raise AssertionError("the text tower ran although the prompts were cached")
            return self.original(ids, mask)
        self.engine._text_forward = forward
        return self

    def __exit__(self, *exc):
        del self.engine._text_forward


def _prompts(count, start=0):
    return [f"a photo of thing number {i}" for i in range(start, start + count)]


def test_memory_cache_is_a_bounded_lru(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir, text_cache_size=3)
    engine.encode_text(["a", "b", "c"])
    engine.encode_text(["a"])            # touch: "b" is now the least recently used
    engine.encode_text(["d"])            # evicts "b"
    assert len(engine.text_cache) == 3
    with CountingForward(engine) as counter:
        engine.encode_text(["a", "c", "d"])
        assert counter.calls == []
        engine.encode_text(["b"])
        assert counter.calls == [1]


def test_default_size_and_bad_sizes(tiny_model_dir):
    assert clippy_rt.load(tiny_model_dir).text_cache.max_entries == 4096
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_entries"):
            clippy_rt.load(tiny_model_dir, text_cache_size=bad)


def test_long_prompts_are_keyed_by_their_sha256(engine):
    long_prompt = "a very long description of a scene " * 20
    assert len(long_prompt) > 256
    assert prompt_key(long_prompt) == "sha256:" + hashlib.sha256(long_prompt.encode()).hexdigest()
    assert prompt_key("a cat") == "a cat"
    engine.clear_text_cache()
    first = engine.encode_text([long_prompt, "a cat"])
    assert all(len(key) <= 256 + len("sha256:") for key in engine.text_cache._entries)
    with CountingForward(engine, fail=True):
        torch.testing.assert_close(engine.encode_text([long_prompt]), first[:1])


def test_memory_stays_bounded_under_many_new_prompts(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir, text_cache_size=64)
    dim = engine.config.embed_dim
    for start in range(0, 600, 60):
        engine.encode_text(_prompts(60, start))
    assert len(engine.text_cache) == 64
    # Each kept embedding owns its storage: a row view would keep its whole batch alive.
    storages = {e.untyped_storage().data_ptr(): e.untyped_storage().nbytes()
                for e in engine.text_cache._entries.values()}
    assert len(storages) == 64
    assert sum(storages.values()) == 64 * dim * 4


def test_clear_during_segment_in_threads_gives_serial_results(engine):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(4)]
    vocabularies = [[f"class {k} of set {v}" for k in range(3 + v)] for v in range(4)]
    expected = {(i, v): engine.segment(images[i], vocabularies[v], size=(16, 32)).labels
                for i in range(4) for v in range(4)}
    errors, mismatches = [], []
    stop = threading.Event()

    def worker(seed):
        local = np.random.default_rng(seed)
        try:
            for _ in range(25):
                i, v = int(local.integers(4)), int(local.integers(4))
                labels = engine.segment(images[i], vocabularies[v], size=(16, 32)).labels
                if not torch.equal(labels, expected[(i, v)]):
                    mismatches.append((i, v))
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))

    def clearer():
        # About a thousand clears a second, each segment call sees several; a clearer that
        # never sleeps starves the workers of the GIL and only slows the test.
        while not stop.wait(0.001):
            engine.clear_text_cache()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    background = threading.Thread(target=clearer)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads hand over often: more interleavings per call
    try:
        background.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        background.join()
        sys.setswitchinterval(interval)
    assert errors == [] and mismatches == []


@pytest.mark.parametrize("stage", ["get", "put"])
def test_a_clear_between_lookup_and_use_is_harmless(tiny_model_dir, stage):
    # What another thread's clear_text_cache() can do at the worst moment, made deterministic.
    engine = clippy_rt.load(tiny_model_dir)
    expected = engine.encode_text(["a cat", "a dog"])
    if stage == "put":
        engine.clear_text_cache()
    cache = engine.text_cache
    original = getattr(cache, stage)

    def then_clear(*args):
        result = original(*args)
        cache.clear()
        return result

    setattr(cache, stage, then_clear)
    torch.testing.assert_close(engine.encode_text(["a cat", "a dog", "a cat"]), expected[[0, 1, 0]])


def test_disk_cache_survives_a_restart(tiny_model_dir, tmp_path):
    first = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    prompts = _prompts(5)
    embeds = first.encode_text(prompts)
    files = sorted(p.name for p in tmp_path.glob("*.sqlite"))
    assert len(files) == 1
    del first

    restarted = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    with CountingForward(restarted) as counter:
        again = restarted.encode_text(prompts[::-1] + ["something new"])
        assert counter.calls == [1]
    torch.testing.assert_close(again[:5], embeds.flip(0), rtol=0, atol=0)
    # Without the directory, nothing is read from disk.
    with CountingForward(clippy_rt.load(tiny_model_dir)) as counter:
        counter.engine.encode_text(prompts)
        assert counter.calls == [5]


def test_disk_rows_are_separate_per_precision_and_per_model(tiny_model_dir, tmp_path):
    clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path).encode_text(["a cat"])
    bf16 = clippy_rt.load(tiny_model_dir, precision="bf16", text_cache_dir=tmp_path)
    with CountingForward(bf16) as counter:
        bf16.encode_text(["a cat"])
        assert counter.calls == [1]
    # Another model (same config, other weights) gets its own file.
    from clippy_rt.formats.random_init import random_init
    other_dir = tmp_path / "other-model"
    random_init("tiny", other_dir, seed=1)
    other = clippy_rt.load(other_dir, text_cache_dir=tmp_path / "cache2")
    clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path / "cache2").encode_text(["a cat"])
    with CountingForward(other) as counter:
        other.encode_text(["a cat"])
        assert counter.calls == [1]
    assert len(list((tmp_path / "cache2").glob("*.sqlite"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_cache_file_is_rebuilt(tiny_model_dir, tmp_path, damage):
    engine = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    embeds = engine.encode_text(_prompts(12))
    (path,) = tmp_path.glob("*.sqlite")
    engine.text_cache.store.close()
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 500)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")

    restarted = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = restarted.encode_text(_prompts(12))
    torch.testing.assert_close(again, embeds)
    third = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    with CountingForward(third, fail=True):
        torch.testing.assert_close(third.encode_text(_prompts(12)), embeds)


def test_a_damaged_row_is_dropped_and_encoded_again(tiny_model_dir, tmp_path):
    engine = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    embeds = engine.encode_text(["a cat", "a dog"])
    (path,) = tmp_path.glob("*.sqlite")
    with sqlite3.connect(path) as connection:
        blob = connection.execute("SELECT data FROM embeddings WHERE key = 'a dog'").fetchone()[0]
        flipped = bytes([blob[0] ^ 0x40]) + blob[1:]
        connection.execute("UPDATE embeddings SET data = ? WHERE key = 'a dog'", (flipped,))
    restarted = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    with CountingForward(restarted) as counter, pytest.warns(RuntimeWarning, match="damaged"):
        again = restarted.encode_text(["a cat", "a dog"])
    assert counter.calls == [1]
    torch.testing.assert_close(again, embeds)


def test_disk_store_is_a_bounded_lru(tmp_path):
    store = DiskStore(tmp_path / "m.sqlite", scope="torch/fp32", max_entries=5)
    vectors = {f"p{i}": np.full(4, i, dtype=np.float32) for i in range(5)}
    store.put(vectors)
    store.get(["p0"])                      # p0 becomes the most recently used
    store.put({"p5": np.zeros(4, np.float32), "p6": np.ones(4, np.float32)})
    assert len(store) == 5
    kept = store.get([f"p{i}" for i in range(7)])
    assert sorted(kept) == ["p0", "p3", "p4", "p5", "p6"]
    np.testing.assert_array_equal(kept["p4"], np.full(4, 4, dtype=np.float32))


def test_concurrent_writers_on_one_file(tmp_path):
    # Separate stores hold separate SQLite connections, as separate processes would.
    path = tmp_path / "m.sqlite"
    stores = [DiskStore(path, scope="torch/fp32") for _ in range(4)]
    errors = []

    def write(index):
        try:
            for batch in range(6):
                stores[index].put({f"w{index}-{batch}-{k}": np.full(8, index, np.float32) for k in range(5)})
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = DiskStore(path, scope="torch/fp32")
    assert len(reader) == 4 * 6 * 5
    assert not any(store.disabled for store in stores)


def test_an_unwritable_directory_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = TextCache(8)
    cache.attach(blocker / "sub", "0" * 64, "torch", "fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored = cache.put(["a"], torch.ones(1, 4))
        cache.put(["b"], torch.ones(1, 4))
    # One warning, one line, that names the folder and no rebuild (there is no file to rebuild).
    (warning,) = caught
    assert warning.category is RuntimeWarning
    text = str(warning.message)
    assert "\n" not in text and str(blocker) in text and "Not a directory" in text
    assert "in memory only" in text and "rebuild" not in text
    assert cache.store.disabled
    assert torch.equal(cache.get(["a"])["a"], stored["a"])


def _rows_on_disk(folder) -> int:
    """Embedding rows in the cache files under ``folder``, read with sqlite3 directly."""
    total = 0
    for path in folder.glob("*.sqlite"):
        with sqlite3.connect(str(path)) as connection:
            total += connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    return total


@pytest.mark.parametrize("disk", [False, True])
def test_clear_forgets_on_disk_only_when_asked_in_the_engine_and_after_a_restart(tiny_model_dir, tmp_path, disk):
    prompts = _prompts(4)
    engine = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    expected = engine.encode_text(prompts)
    assert _rows_on_disk(tmp_path) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clearing is no damage: no rebuild, no memory-only fallback
        engine.clear_text_cache(disk=disk)
    assert len(engine.text_cache) == 0
    assert _rows_on_disk(tmp_path) == (0 if disk else 4)
    with CountingForward(engine) as counter:
        torch.testing.assert_close(engine.encode_text(prompts), expected, rtol=0, atol=0)
        assert counter.calls == ([4] if disk else [])
    assert _rows_on_disk(tmp_path) == 4  # the store keeps working after a clear
    engine.clear_text_cache(disk=disk)
    engine.text_cache.store.close()
    restarted = clippy_rt.load(tiny_model_dir, text_cache_dir=tmp_path)
    with CountingForward(restarted) as counter:
        restarted.encode_text(prompts)
        assert counter.calls == ([4] if disk else [])


def test_new_weights_in_the_same_folder_are_not_served_the_old_embeddings(tiny_model_dir, tmp_path):
    import shutil

    from clippy_rt.formats.random_init import random_init

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    old = clippy_rt.load(folder, text_cache_dir=tmp_path / "cache").encode_text(["a cat"])
    random_init("tiny", folder, seed=7, overwrite=True)
    retrained = clippy_rt.load(folder, text_cache_dir=tmp_path / "cache")
    # The expectation comes from the new weights with no cache at all.
    fresh = clippy_rt.load(folder).encode_text(["a cat"])
    assert not torch.allclose(fresh, old)
    with CountingForward(retrained) as counter:
        torch.testing.assert_close(retrained.encode_text(["a cat"]), fresh, rtol=0, atol=0)
        assert counter.calls == [1]


def test_a_cache_folder_that_does_not_exist_yet_is_created(tmp_path):
    store = DiskStore(tmp_path / "a" / "b" / "c" / "model.sqlite", scope="torch/fp32")
    store.put({"a cat": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(store.get(["a cat"])["a cat"], np.arange(4, dtype=np.float32))
    assert not store.disabled and len(store) == 1
