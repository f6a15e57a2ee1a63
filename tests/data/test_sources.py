"""Data sources: one pool in every form gives the same samples; bad files are listed, never fatal;
every bad input fails with a message naming its cause."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mimic_explorer.data import wds as wds_module
from mimic_explorer.data.errors import BadSampleError, DataSourceError, ErrorLog
from mimic_explorer.data.imageio import decode_image
from mimic_explorer.data.shards import expand_braces
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.torch_dataset import SourceBatches, SourceDataset, collate_good, load_tensors
from mimic_explorer.data.transforms import default_transform

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cifar_mini"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
CLASSES = (FIXTURE / "classes.txt").read_text().split()


def fixture_items() -> list[tuple[str, int, bytes]]:
    """(key, label, jpeg bytes) of the committed pool, in folder order."""
    items = []
    for label, name in enumerate(CLASSES):
        for path in sorted((FIXTURE / name).iterdir()):
            items.append((path.stem, label, path.read_bytes()))
    return items


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_pool_shards(folder: Path, items, shards: int = 2, ext: str = "jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(items) // shards)
    for s in range(shards):
        members = []
        for key, label, data in items[s * per : (s + 1) * per]:
            members += [(f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())]
        write_shard(folder / f"pool-{s:02d}.tar", members)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def error_of(spec: str, **kwargs) -> str:
    with pytest.raises(DataSourceError) as info:
        open_source(spec, **kwargs)
    return str(info.value)


# --- one pool, three forms -----------------------------------------------------------------------


def test_same_pool_as_folder_manifest_and_shards_gives_same_samples(tmp_path):
    items = fixture_items()
    folder = open_source(f"folder:{FIXTURE}")

    # manifest 1: csv, paths relative to the manifest, labels as class names, ids = keys
    rel = os.path.relpath(FIXTURE, tmp_path)
    pd.DataFrame(
        {
            "path": [f"{rel}/{CLASSES[lab]}/{key}.jpg" for key, lab, _ in items],
            "label": [CLASSES[lab] for _, lab, _ in items],
            "sample_id": [key for key, _, _ in items],
        }
    ).to_csv(tmp_path / "pool.csv", index=False)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    manifest = open_source(f"manifest:{tmp_path / 'pool.csv'}")
    # manifest 2: parquet, absolute paths, integer labels, no id column (id = the path as written)
    pd.DataFrame(
        {
            "path": [str(FIXTURE / CLASSES[lab] / f"{key}.jpg") for key, lab, _ in items],
            "label": [lab for _, lab, _ in items],
        }
    ).to_parquet(tmp_path / "pool.parquet")
    manifest2 = open_source(f"manifest:{tmp_path / 'pool.parquet'}")

    write_pool_shards(tmp_path / "shards", items[::-1], shards=3)  # another order on purpose
    shards = open_source(f"wds:{tmp_path / 'shards'}/pool-{{00..02}}.tar", index_dir=tmp_path / "run")

    def by_stem(src):
        return {Path(sid).stem: k for k, sid in enumerate(src.sample_ids)}

    maps = [by_stem(s) for s in (folder, manifest, manifest2, shards)]
    assert all(set(m) == set(maps[0]) for m in maps) and len(maps[0]) == 30
    assert set(shards.sample_ids) == {key for key, _, _ in items} == set(manifest.sample_ids)
    for src in (manifest, manifest2, shards):
        assert src.class_names == folder.class_names == CLASSES
    for src in (manifest, manifest2, shards):
        m = by_stem(src)
        order = [m[Path(sid).stem] for sid in folder.sample_ids]
        np.testing.assert_array_equal(src.labels[order], folder.labels)
        np.testing.assert_array_equal(src.sizes()[order], folder.sizes())
        # identical pixels, hence identical inputs, hence identical scores for any model
        _, x_ref, y_ref = load_tensors(folder, arch="small_cnn")
        pos, x, y = load_tensors(src, arch="small_cnn", indices=order)
        np.testing.assert_array_equal(pos, order)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    with torch.no_grad():
        a = model(load_tensors(folder, arch="small_cnn")[1])
        b = model(load_tensors(shards, arch="small_cnn", indices=[maps[3][Path(s).stem] for s in folder.sample_ids])[1])
    assert torch.equal(a, b)
    assert len({s.fingerprint() for s in (folder, manifest, shards)}) == 3  # ids differ by scheme
    assert folder.fingerprint() == open_source(f"folder:{FIXTURE}").fingerprint()


def test_torchvision_imagefolder_matches_folder_source():
    folder = open_source(f"folder:{FIXTURE}")
    tv = open_source(f"torchvision:ImageFolder:{FIXTURE}")
    assert list(tv.sample_ids) == list(folder.sample_ids)
    np.testing.assert_array_equal(tv.labels, folder.labels)
    assert tv.fingerprint() == folder.fingerprint()
    assert np.array_equal(np.asarray(tv.load(4)), np.asarray(folder.load(4)))


def test_digits_source():
    src = open_source("digits")
    assert len(src) == 1797 and src.class_names[3] == "3"
    image = src.load(10)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert src.sample_ids[0] == "digits-0000"


# --- bad files ---------------------------------------------------------------------------------


def make_messy_pool(root: Path) -> dict[str, str]:
    """98 good images + 2 bad files (2 %): returns {bad id: expected reason fragment}."""
    items = fixture_items()
    k = 0
    while k < 98:
        key, label, data = items[k % len(items)]
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{key}-copy{k // len(items)}.jpg").write_bytes(data)
        k += 1
    truncated = items[0][2][: len(items[0][2]) // 2]
    (root / CLASSES[items[0][1]] / "broken.jpg").write_bytes(truncated)
    (root / "cat" / "notes.txt").write_text("labelled by Bob, check later\n")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # OS dropping: not a sample
    return {f"{CLASSES[items[0][1]]}/broken.jpg": "truncated", "cat/notes.txt": "not an image"}


def test_folder_pool_with_2_percent_bad_files_loads_every_good_sample(tmp_path):
    expected_bad = make_messy_pool(tmp_path / "pool")
    src = open_source(f"folder:{tmp_path / 'pool'}")
    assert len(src) == 100
    good, errors = src.scan(workers=2)
    assert len(good) == 98
    assert set(errors.sample_ids) == set(expected_bad)
    for bad in errors:
        assert expected_bad[bad.sample_id] in bad.reason
        assert bad.path == str(tmp_path / "pool" / bad.sample_id)
    assert set(src.sample_ids[good]) == set(src.sample_ids) - set(expected_bad)

    # the same through the in-memory loader and through DataLoader batches
    log = ErrorLog()
    pos, x, _y = load_tensors(src, arch="small_cnn", errors=log, workers=2)
    assert len(pos) == 98 and x.shape == (98, 3, 32, 32) and set(log.sample_ids) == set(expected_bad)
    batches = SourceBatches(src, batch_size=16, seed=1, arch="small_cnn")
    seen = np.concatenate([index.numpy() for index, inputs, targets in batches.epoch(0)])
    assert sorted(seen.tolist()) == sorted(pos.tolist())
    assert set(batches.errors.sample_ids) == set(expected_bad)

    out = log.write_parquet(tmp_path / "run" / "errors.parquet")
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["sample_id", "path", "reason"] and len(frame) == 2
    assert "skipped 2 bad sample(s)" in log.summary()


def test_load_raises_bad_sample_error_and_iteration_does_not(tmp_path):
    make_messy_pool(tmp_path / "pool")
    src = open_source(f"folder:{tmp_path / 'pool'}")
    k = src.index_of("cat/notes.txt")
    with pytest.raises(BadSampleError, match="not an image"):
        src.load(k)
    victim = next(i for i, sid in enumerate(src.sample_ids) if "copy" in sid)
    os.remove(src.source_of(victim))  # a file deleted after opening
    errors = ErrorLog()
    assert len(list(src.iter_images(errors=errors))) == 97
    assert any(b.reason == "file missing" for b in errors)


def test_corrupt_and_empty_bytes_have_reasons():
    jpeg = fixture_items()[0][2]
    for data, fragment in [
        (b"", "empty"),
        (b"hello world", "not an image"),
        (jpeg[:200], "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, ""),
    ]:
        with pytest.raises(BadSampleError) as info:
            decode_image(data, "x", "x.jpg")
        assert fragment in info.value.bad.reason


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_every_colour_mode_becomes_the_same_rgb():
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    cases = {
        "L": Image.fromarray(grey, "L"),
        "P": Image.fromarray(grey, "L").convert("P"),
        "RGB": Image.fromarray(np.stack([grey] * 3, -1), "RGB"),
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "LA": Image.merge("LA", [Image.fromarray(grey, "L"), Image.new("L", (2, 2), 255)]),
    }
    for name, image in cases.items():
        rgb = decode_image(_encode(image, "PNG"))
        assert rgb.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(rgb)[..., 0], grey, err_msg=name)
        np.testing.assert_array_equal(np.asarray(rgb)[..., 2], grey, err_msg=name)

    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))  # fully transparent → white
    assert np.asarray(decode_image(_encode(rgba, "PNG"))).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    assert np.asarray(decode_image(_encode(palette, "PNG", transparency=1))).tolist() == [
        [[255, 0, 0], [255, 255, 255]]
    ]

    cmyk = decode_image(_encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.asarray(cmyk).min() >= 250  # no ink = white
    bits = decode_image(_encode(Image.new("1", (4, 4), 1), "PNG"))
    assert np.asarray(bits).min() == 255
    webp = decode_image(_encode(Image.new("RGB", (4, 4), (0, 128, 0)), "WEBP", lossless=True))
    assert np.asarray(webp)[0, 0].tolist() == [0, 128, 0]

    rotated = Image.new("RGB", (4, 2), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    assert decode_image(_encode(rotated, "JPEG", exif=exif.tobytes())).size == (2, 4)


# --- WebDataset specifics ----------------------------------------------------------------------


def test_shard_index_is_built_once_and_rebuilt_when_a_shard_changes(tmp_path, monkeypatch):
    items = fixture_items()
    write_pool_shards(tmp_path / "s", items, shards=2)
    spec = f"wds:{tmp_path / 's'}/pool-*.tar"
    first = open_source(spec, index_dir=tmp_path / "run")
    assert len(first) == 30 and all(
        p is not None and p.parent == tmp_path / "run" / "wds_index" for p in first.index_files
    )

    def refuse(shard):
        raise AssertionError("index rebuilt although the shard did not change")

    monkeypatch.setattr(wds_module, "build_shard_index", refuse)
    again = open_source(spec, index_dir=tmp_path / "run")
    assert list(again.sample_ids) == list(first.sample_ids)
    monkeypatch.undo()

    write_pool_shards(tmp_path / "s", items[:20], shards=2)  # shards rewritten: other size and mtime
    changed = open_source(spec, index_dir=tmp_path / "run")
    assert len(changed) == 20
    assert len(list((tmp_path / "run" / "wds_index").glob("*.npz"))) == 2  # stale entries removed


def test_shard_random_access_matches_member_bytes_and_survives_pickling(tmp_path):
    items = fixture_items()
    write_pool_shards(tmp_path / "s", items, shards=2, ext="png")  # .png members holding JPEG bytes still decode
    src = open_source(f"wds:{tmp_path / 's'}/pool-{{00,01}}.tar", index_dir=tmp_path)
    by_key = {key: data for key, _, data in items}
    for i in (29, 0, 17, 3):
        assert src.read_bytes(i) == by_key[src.sample_ids[i]]
        assert src.source_of(i).endswith(f"pool-0{int(i >= 15)}.tar:{src.sample_ids[i]}.png")
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(np.asarray(clone.get(src.sample_ids[5])), np.asarray(src.load(5)))
    loader = torch.utils.data.DataLoader(SourceDataset(src, arch="small_cnn"), batch_size=8, collate_fn=collate_good)
    assert sum(len(b.index) for b in loader) == 30


def test_shards_keys_with_folders_and_without_images(tmp_path):
    jpeg = fixture_items()[0][2]
    write_shard(
        tmp_path / "a.tar",
        [
            ("x/s1.jpg", jpeg),
            ("x/s1.cls", b"2"),
            ("s2.meta.json", b"{}"),
            ("s2.cls", b"1"),
            ("s3.JPEG", jpeg),
            ("s3.cls", b" 0\n"),
        ],
    )
    src = open_source(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path)
    assert list(src.sample_ids) == ["x/s1", "s3"] and src.labels.tolist() == [2, 0]
    assert src.class_names == ["0", "1", "2"]
    assert [b.sample_id for b in src.open_errors] == ["s2"] and "no image member" in src.open_errors[0].reason


def test_brace_expansion():
    assert expand_braces("d/train-{00..03}.tar") == [f"d/train-0{k}.tar" for k in range(4)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{0..10..5}") == ["x0", "x5", "x10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# --- bad input: clear errors -------------------------------------------------------------------


def test_bad_specs_and_paths(tmp_path):
    assert "does not exist" in error_of(f"folder:{tmp_path / 'nope'}")
    assert "does not exist" in error_of(f"manifest:{tmp_path / 'nope.csv'}")
    assert "does not exist" in error_of(f"wds:{tmp_path / 'nope-{00..01}.tar'}")
    assert "no shard files match" in error_of(f"wds:{tmp_path}/*.tar")
    assert "unknown data SPEC" in error_of("pictures:somewhere")
    assert "did you mean folder:" in error_of(str(FIXTURE))
    assert "names no path" in error_of("folder:")
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in error_of(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "pool" / "cat").mkdir(parents=True)
    (tmp_path / "pool" / "dog").mkdir()
    (tmp_path / "pool" / "cat" / "a.jpg").write_bytes(fixture_items()[0][2])
    message = error_of(f"folder:{tmp_path / 'pool'}")
    assert "class folder" in message and "dog" in message and "is empty" in message


def test_torchvision_dataset_absent_or_unknown(tmp_path):
    message = error_of(f"torchvision:CIFAR10:{tmp_path}")
    assert "CIFAR10 is not on disk" in message and "downloads are disabled" in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded
    assert "did you mean CIFAR10" in error_of(f"torchvision:CIFAR11:{tmp_path}")
    assert "does not exist" in error_of(f"torchvision:MNIST:{tmp_path / 'nope'}")
    assert "NAME[/SPLIT]:ROOT" in error_of("torchvision:CIFAR10")


def _manifest(tmp_path: Path, frame: pd.DataFrame, classes: list[str] | None = None, name: str = "m.csv") -> str:
    frame.to_csv(tmp_path / name, index=False)
    if classes is not None:
        (tmp_path / "classes.txt").write_text("\n".join(classes))
    return f"manifest:{tmp_path / name}"


def test_manifest_errors(tmp_path):
    path = str(FIXTURE / "cat" / os.listdir(FIXTURE / "cat")[0])
    assert "missing column(s) label" in error_of(_manifest(tmp_path, pd.DataFrame({"path": [path]})))
    assert "missing column(s) path" in error_of(_manifest(tmp_path, pd.DataFrame({"file": [path], "label": [1]})))
    message = error_of(
        _manifest(tmp_path, pd.DataFrame({"path": [path, path + "x"], "label": [1, 7]}), classes=["a", "b", "c"])
    )
    assert "outside the class range 0..2" in message and "=7" in message
    message = error_of(_manifest(tmp_path, pd.DataFrame({"path": [path], "label": ["zebra"]}), classes=["cat", "dog"]))
    assert "not in the class list" in message and "zebra" in message
    os.remove(tmp_path / "classes.txt")
    assert "outside the class range" in error_of(_manifest(tmp_path, pd.DataFrame({"path": [path], "label": [-1]})))
    message = error_of(_manifest(tmp_path, pd.DataFrame({"path": [path, path], "label": [0, 1]})))
    assert "duplicate sample ids" in message
    message = error_of(
        _manifest(tmp_path, pd.DataFrame({"path": [path, path], "label": [0, 1], "sample_id": ["a", "a"]}))
    )
    assert "duplicate sample ids" in message and "'a'" in message
    message = error_of(_manifest(tmp_path, pd.DataFrame({"path": [path], "label": [0]}), name="m.txt"))
    assert ".csv or .parquet" in message


def test_manifest_messy_rows_true_labels_and_class_names(tmp_path):
    paths = [str(FIXTURE / "cat" / n) for n in sorted(os.listdir(FIXTURE / "cat"))]
    frame = pd.DataFrame(
        {
            "path": [paths[0], paths[1], "", paths[2], "missing/file.jpg"],
            "label": ["cat", "", "dog", "dog", "cat"],
            "true_label": ["cat", "cat", "dog", "cat", "cat"],
            "sample_id": ["a", "b", "c", "d", ""],
        }
    )
    src = open_source(_manifest(tmp_path, frame))
    assert src.class_names == ["cat", "dog"]
    assert list(src.sample_ids) == ["a", "d", "missing/file.jpg"]
    assert src.labels.tolist() == [0, 1, 0] and src.true_labels.tolist() == [0, 0, 0]
    assert {b.sample_id: b.reason for b in src.open_errors} == {
        "b": "manifest row has no label",
        "c": "manifest row has no path",
    }
    errors = ErrorLog()
    assert [i for i, _ in src.iter_images(errors=errors)] == [0, 1]
    assert {b.sample_id for b in errors} == {"b", "c", "missing/file.jpg"}
    assert src.sizes()[2] == -1
    forced = open_source(f"manifest:{tmp_path / 'm.csv'}", class_names=["dog", "cat", "bird"])
    assert forced.labels.tolist() == [1, 0, 1]


def test_shard_errors(tmp_path):
    jpeg = fixture_items()[0][2]
    write_shard(tmp_path / "a.tar", [("k1.jpg", jpeg), ("k1.cls", b"0"), ("k2.jpg", jpeg)])
    message = error_of(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path)
    assert "without .cls" in message and "k2.jpg" in message and "a.tar" in message
    write_shard(tmp_path / "b.tar", [("k1.jpg", jpeg), ("k1.cls", b"cat")])
    assert "not an integer class index" in error_of(f"wds:{tmp_path / 'b.tar'}", index_dir=tmp_path)
    write_shard(tmp_path / "c.tar", [("k1.jpg", jpeg), ("k1.cls", b"1")])
    write_shard(tmp_path / "d.tar", [("k1.jpg", jpeg), ("k1.cls", b"1")])
    message = error_of(f"wds:{tmp_path}/{{c,d}}.tar", index_dir=tmp_path)
    assert "duplicate sample ids" in message and "k1" in message
    (tmp_path / "classes.txt").write_text("only\n")
    assert "outside the class range 0..0" in error_of(f"wds:{tmp_path / 'c.tar'}", index_dir=tmp_path)
    (tmp_path / "e.tar.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    assert "not an uncompressed tar" in error_of(f"wds:{tmp_path / 'e.tar.gz'}", index_dir=tmp_path)


# --- transforms --------------------------------------------------------------------------------


def test_default_transforms_per_architecture():
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    assert default_transform("small_cnn")(image).shape == (3, 32, 32)
    assert default_transform("resnet18").describe()["crop"] == 224
    assert default_transform("inception_v3").crop == 299
    assert default_transform("my_models.py:make").crop == 224
    x = default_transform("resnet18")(image)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(
        x[:, 100, 100], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]), atol=1e-4
    )
    custom = lambda img: torch.zeros(1)  # noqa: E731 - any callable overrides the default
    assert SourceDataset(open_source(f"folder:{FIXTURE}"), custom)[0][1].shape == (1,)


# --- the real CIFAR-10 shards (skipped without ../shared) ---------------------------------------


@pytest.mark.skipif(not (SHARED / "train-00.tar").exists(), reason="../shared/data/cifar10 not present")
def test_real_cifar_shard(tmp_path):
    src = open_source(f"wds:{SHARED}/train-0{{0..0}}.tar", index_dir=tmp_path)
    assert len(src) == 10_000 and src.class_names == CLASSES
    names = [sid.split("_")[1] for sid in src.sample_ids]
    assert [CLASSES[k] for k in src.labels] == names  # .cls agrees with the class in the key
    rng = np.random.default_rng(0)
    for i in rng.choice(len(src), 20, replace=False):
        image = src.load(int(i))
        assert image.mode == "RGB" and image.size == (32, 32)
    for key, label, data in fixture_items():  # the fixture was cut from this shard
        k = src.index_of(key)
        assert src.read_bytes(k) == data and src.labels[k] == label


def test_load_encoded_is_load_and_read_bytes_in_one_read(tmp_path):
    items = fixture_items()
    write_pool_shards(tmp_path / "shards", items, shards=2)
    for source in (
        open_source(f"folder:{FIXTURE}"),
        open_source(f"wds:{tmp_path / 'shards'}/pool-{{00..01}}.tar", index_dir=tmp_path),
    ):
        for i in (0, 7, len(source) - 1):
            image, data = source.load_encoded(i)
            assert data == source.read_bytes(i) and data[:3] == b"\xff\xd8\xff"
            assert np.array_equal(np.asarray(image), np.asarray(source.load(i)))
    digits = open_source("digits")
    image, data = digits.load_encoded(5)
    assert data is None and np.array_equal(np.asarray(image), np.asarray(digits.load(5)))
    with pytest.raises(IndexError):
        digits.load_encoded(len(digits))


def test_load_encoded_turns_a_bad_file_into_a_bad_sample(tmp_path):
    items = fixture_items()[:4]
    items[2] = (items[2][0], items[2][1], b"not an image")
    write_pool_shards(tmp_path / "shards", items, shards=1)
    source = open_source(f"wds:{tmp_path / 'shards'}/pool-00.tar", index_dir=tmp_path)
    bad = next(i for i, sid in enumerate(source.sample_ids) if sid == items[2][0])
    with pytest.raises(BadSampleError):
        source.load_encoded(bad)
