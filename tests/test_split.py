from collections import Counter

import numpy as np

from trainables import Split, make_split, prepare_data, scan_folder


def test_split_is_stratified_deterministic_and_disjoint(flowers):
    scan = scan_folder(flowers)
    a = make_split(scan, val_fraction=0.2, seed=7)
    b = make_split(scan, val_fraction=0.2, seed=7)
    c = make_split(scan, val_fraction=0.2, seed=8)
    assert a.train == b.train and a.val == b.val
    assert a.val != c.val
    train_files = {p for p, _ in a.train}
    val_files = {p for p, _ in a.val}
    assert not train_files & val_files
    assert len(train_files) + len(val_files) == len(scan.files)
    totals = Counter(y for _, y in scan.files)
    val_counts = Counter(y for _, y in a.val)
    for label, total in totals.items():
        assert abs(val_counts[label] - 0.2 * total) <= 1, a.classes[label]
    assert a.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def test_split_json_round_trip(tmp_path, synthetic):
    split = make_split(scan_folder(synthetic), seed=3)
    split.save(tmp_path / "split.json")
    again = Split.load(tmp_path / "split.json")
    assert again.train == split.train and again.val == split.val
    assert again.classes == split.classes and again.root == split.root


def test_prepare_data_decodes_once_and_skips_unusable_files(synthetic):
    (synthetic / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    (synthetic / "class1" / "notes.txt").write_text("hello")
    split, cache = prepare_data(scan_folder(synthetic), size=24, val_fraction=0.2, seed=0)
    skipped = {s.path: s.reason for s in split.skipped}
    assert "class0/broken.jpg" in skipped and "class1/notes.txt" in skipped
    assert all("broken" not in p for p, _ in split.train + split.val)
    assert cache.train_x.shape == (len(split.train), 3, 24, 24)
    assert cache.val_x.dtype == np.uint8
    # Rows follow the split's order: class colours show in the decoded pixels.
    for x, (_, label) in zip(cache.train_x, split.train, strict=True):
        assert int(np.argmax(x.reshape(3, -1).mean(1))) == label
