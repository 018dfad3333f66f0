import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trainables import DataError, make_split, prepare_data, scan_folder
from tuner import Experiment


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
    exp = Experiment.from_folder(tmp_path / "exp")
    exp.write_split(split)
    again = exp.split()
    assert again.train == split.train and again.val == split.val
    assert again.classes == split.classes and again.root == split.root


def test_prepare_data_decodes_once_and_skips_unusable_files(synthetic):
    (synthetic / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    (synthetic / "class1" / "notes.txt").write_text("hello")
    split, cache = prepare_data(scan_folder(synthetic), resize=24, val_fraction=0.2, seed=0)
    skipped = {s.path: s.reason for s in split.skipped}
    assert "class0/broken.jpg" in skipped and "class1/notes.txt" in skipped
    assert all("broken" not in p for p, _ in split.train + split.val)
    assert cache.train_x.shape == (len(split.train), 3, 24, 24)
    assert cache.val_x.dtype == np.uint8
    # Rows follow the split's order: class colours show in the decoded pixels.
    for x, (_, label) in zip(cache.train_x, split.train, strict=True):
        assert int(np.argmax(x.reshape(3, -1).mean(1))) == label


def test_test_split_is_stratified_disjoint_and_never_decoded_for_trials(flowers):
    scan = scan_folder(flowers)
    split = make_split(scan, val_fraction=0.2, seed=7, test_fraction=0.15)
    again = make_split(scan, val_fraction=0.2, seed=7, test_fraction=0.15)
    assert split.test == again.test and split.val == again.val
    parts = [{p for p, _ in part} for part in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == len(scan.files)
    totals = Counter(y for _, y in scan.files)
    for fraction, part in ((0.15, split.test), (0.2, split.val)):
        counts = Counter(y for _, y in part)
        for label, total in totals.items():
            assert abs(counts[label] - fraction * total) <= 1, (fraction, split.classes[label])
    # Without a test split the same seed gives the usual train/val split.
    assert make_split(scan, val_fraction=0.2, seed=7).test == []


def test_a_trials_data_holds_no_test_photo(synthetic, tmp_path):
    split, cache = prepare_data(scan_folder(synthetic), resize=24, seed=0, test_fraction=0.2)
    assert len(split.test) == 6  # 2 of each class's 10
    assert len(cache.train_y) + len(cache.val_y) == len(split.train) + len(split.val)
    # Each decoded row is the photo of its split entry: none is a test photo.
    from trainables import decode_files

    test_pixels, _, _ = decode_files([split.root.local_path(p) for p, _ in split.test], 24)
    rows = np.concatenate([cache.train_x, cache.val_x])
    for photo in test_pixels:
        assert not (rows == photo).all(axis=(1, 2, 3)).any()
    exp = Experiment.from_folder(tmp_path / "exp")
    exp.write_split(split)
    loaded = exp.split()
    assert loaded.test == split.test and loaded.test_fraction == 0.2


@pytest.mark.parametrize(
    ("fraction", "message"),
    [(-0.1, "must be in [0, 0.5)"), (0.5, "must be in [0, 0.5)"), (0.45, "too few photos")],
)
def test_bad_test_fractions_are_refused(synthetic, fraction, message):
    scan = scan_folder(synthetic)
    if fraction == 0.45:  # 2 photos per class: one for test, none left for val and train
        scan.files = [f for f in scan.files if int(Path(f[0]).stem) < 2]
    with pytest.raises(DataError, match=re.escape(message)):
        make_split(scan, val_fraction=0.2, seed=0, test_fraction=fraction)


def test_a_refit_trains_on_train_and_val_and_scores_on_test_only(synthetic):
    from trainables import decode_files, decode_for_refit

    split, _ = prepare_data(scan_folder(synthetic), resize=24, seed=0, test_fraction=0.2)
    cache = decode_for_refit(split, 24)
    assert len(cache.train_y) == len(split.train) + len(split.val)
    assert len(cache.val_y) == len(split.test)
    test_pixels, _, _ = decode_files([split.root.local_path(p) for p, _ in split.test], 24)
    assert np.array_equal(cache.val_x, test_pixels)
    for photo in test_pixels:
        assert not (cache.train_x == photo).all(axis=(1, 2, 3)).any()
    with pytest.raises(DataError, match="no test split"):
        decode_for_refit(make_split(scan_folder(synthetic), seed=0), 24)
