"""PhotoSource: the same ImageFolder listing and reads from a local folder and a bucket."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest
from conftest import S3_BUCKET, s3_uri
from PIL import Image

from trainables import scan_folder
from trainables.data._source import LEAVES, PhotoSource, SourceError

# (relative path, kind): kind is an image format or raw bytes.
TREE = {
    "daisy/1.jpg": "JPEG",
    "daisy/2.JPG": "JPEG",
    "daisy/z.jpeg": "JPEG",
    "daisy/sub/3.png": "PNG",
    "daisy/sub/deeper/4.jpg": "JPEG",
    "daisy/sub/a.jpg": "JPEG",
    "daisy/.DS_Store": b"\x00\x01",
    "daisy/notes.txt": b"not a photo",
    "daisy/.cache/hidden_dir.jpg": "JPEG",
    "roses/a.jpg": "JPEG",
    "roses/b.webp": "WEBP",
    "roses/nested/c.jpg": "JPEG",
    "_unused/x.jpg": "JPEG",
    ".git/y.jpg": "JPEG",
    "README.txt": b"top-level files are not photos of a class",
}


def build(root: Path) -> Path:
    for i, (rel, kind) in enumerate(sorted(TREE.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(kind, bytes):
            path.write_bytes(kind)
        else:
            Image.new("RGB", (8 + i, 6), (i * 15, 80, 200)).save(path, kind)
    return root


def scan_listing(root: Path) -> tuple:
    scan = scan_folder(root)
    return scan.classes, scan.files, [(s.path, s.reason) for s in scan.skipped]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build(tmp_path / "photos")


def test_local_listing_is_scan_folders(tree):
    listing = PhotoSource.parse(tree).walk()
    assert listing == scan_listing(tree)
    classes, files, skipped = listing
    assert classes == ["daisy", "roses"]
    assert [p for p, _ in files][:6] == [
        "daisy/1.jpg", "daisy/2.JPG", "daisy/z.jpeg", "daisy/sub/3.png", "daisy/sub/a.jpg",
        "daisy/sub/deeper/4.jpg",
    ]  # fmt: skip
    assert dict(skipped) == {
        "daisy/.DS_Store": "hidden file",
        "daisy/notes.txt": "not an image file extension",
    }


def test_parse_expands_home_and_keeps_what_was_given(tree, monkeypatch):
    monkeypatch.setenv("HOME", str(tree.parent))
    source = PhotoSource.parse("~/photos")
    assert source.is_local and source.location == "~/photos"
    assert source.display() == str(tree.resolve())
    assert PhotoSource.parse(f"file://{tree}").walk() == source.walk()


def test_symlink_loops_are_visited_once(tree):
    before = PhotoSource.parse(tree).walk()
    (tree / "daisy" / "up").symlink_to("..")
    (tree / "roses" / "self").symlink_to(".")
    (tree / "daisy" / "sub" / "to_roses").symlink_to("../../roses")
    (tree / "roses" / "nested" / "to_daisy").symlink_to("../../daisy")
    start = time.monotonic()
    after = PhotoSource.parse(tree).walk()
    assert time.monotonic() - start < 5
    assert after == before


def test_a_link_to_a_folder_inside_the_root_is_followed_once(tree):
    extra = tree / ".stash"
    extra.mkdir()
    Image.new("RGB", (9, 9)).save(extra / "kept.jpg")
    (tree / "roses" / "stash").symlink_to("../.stash")
    (tree / "daisy" / "stash_again").symlink_to("../.stash")
    _, files, _ = PhotoSource.parse(tree).walk()
    assert [f for f in files if "kept" in f[0]] == [("daisy/stash_again/kept.jpg", 0)]


def test_links_to_folders_outside_the_root_are_skipped_with_their_reason(tree, tmp_path):
    before = PhotoSource.parse(tree).walk()
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (9, 9)).save(outside / "far.jpg")
    (tree / "daisy" / "away").symlink_to(outside)
    (tree / "tulips").symlink_to(outside)
    classes, files, skipped = PhotoSource.parse(tree).walk()
    assert (classes, files) == before[:2]
    assert ("daisy/away", LEAVES) in skipped
    assert ("tulips", LEAVES) in skipped
    assert LEAVES.startswith("link leaves the data folder")
    # Asked to, the links are followed.
    _, followed, skipped = PhotoSource.parse(tree, follow_links=True).walk()
    assert not [s for s in skipped if s[1] == LEAVES] and len(followed) > len(files)


def test_links_to_photos_anywhere_are_listed_like_scan_folder(tree, tmp_path):
    """A folder of links to photos elsewhere (as the tests' photo subsets are) is usable."""
    linked = tmp_path / "linked"
    for rel in ("daisy/1.jpg", "daisy/sub/3.png", "roses/a.jpg"):
        (linked / rel).parent.mkdir(parents=True, exist_ok=True)
        (linked / rel).symlink_to(tree / rel)
    source = PhotoSource.parse(linked)
    assert source.walk() == scan_listing(linked)
    assert source.read("daisy/1.jpg", 10**6) == (tree / "daisy/1.jpg").read_bytes()


def test_a_fifo_is_skipped_and_reading_it_never_blocks(tree):
    os.mkfifo(tree / "daisy" / "x.jpg")
    source = PhotoSource.parse(tree)
    _, files, skipped = source.walk()
    assert ("daisy/x.jpg", "not a regular file") in skipped
    assert "daisy/x.jpg" not in dict(files)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            source.read("daisy/x.jpg", 1000)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], SourceError) and "not a regular file" in str(outcome[0])


def test_a_link_to_a_device_is_skipped_and_refused(tree):
    (tree / "daisy" / "zero.jpg").symlink_to("/dev/zero")
    (tree / "daisy" / "gone.jpg").symlink_to(tree / "nowhere.jpg")
    source = PhotoSource.parse(tree)
    _, files, skipped = source.walk()
    assert ("daisy/zero.jpg", "not a regular file") in skipped
    assert ("daisy/gone.jpg", "broken symbolic link") in skipped
    assert not {"daisy/zero.jpg", "daisy/gone.jpg"} & set(dict(files))
    with pytest.raises(SourceError, match="not a regular file"):
        source.read("daisy/zero.jpg", 1000)
    with pytest.raises(FileNotFoundError):
        source.read("daisy/gone.jpg", 1000)


def test_read_refuses_files_over_the_limit_and_paths_outside(tree):
    source = PhotoSource.parse(tree)
    data = (tree / "daisy/1.jpg").read_bytes()
    assert source.read("daisy/1.jpg", len(data)) == data
    with pytest.raises(SourceError, match=f"larger than {len(data) - 1} bytes"):
        source.read("daisy/1.jpg", len(data) - 1)
    with pytest.raises(FileNotFoundError):
        source.read("daisy/missing.jpg", 1000)
    for bad in ("../photos/daisy/1.jpg", "/etc/passwd", "daisy//1.jpg", ""):
        with pytest.raises(SourceError, match="not a path inside"):
            source.read(bad, 1000)


def test_fingerprint_is_size_and_mtime(tree):
    source = PhotoSource.parse(tree)
    st = os.stat(tree / "roses/a.jpg")
    assert source.fingerprint(["roses/a.jpg", "roses/gone.jpg"]) == [
        (st.st_size, st.st_mtime_ns),
        (-1, -1),
    ]
    assert source.fingerprint([]) == []


def test_a_source_pickles(tree):
    source = PhotoSource.parse(tree)
    copy = pickle.loads(pickle.dumps(source))
    assert (copy.location, copy.display(), copy.is_local) == (str(tree), str(tree), True)
    assert copy.walk() == source.walk()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "f.jpg", (p / "f.jpg").write_bytes(b"x"))[0], "is a file, not a folder"),
        (lambda p: p, "has no class folders; expected ImageFolder layout ROOT/CLASS/photo.jpg"),
    ],
)
def test_unusable_local_folders(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        PhotoSource.parse(make(tmp_path)).walk()


@pytest.mark.parametrize(
    "uri",
    [
        "s3://AKIAX:secret@bucket/photos",
        "s3://AKIAX@bucket/photos",
        "s3://bucket/photos?access_key=AKIAX&secret_key=s",
        "s3://bucket/photos?Session_Token=t",
    ],
)
def test_uris_with_credentials_are_refused(uri):
    with pytest.raises(SourceError, match="must not carry credentials") as caught:
        PhotoSource.parse(uri)
    assert "secret" not in str(caught.value).replace("SECRET", "")


# On a real S3 server --------------------------------------------------------


@pytest.fixture(scope="module")
def bucket_tree(s3: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The local tree, and the URI of the same tree uploaded to the test bucket."""
    import pyarrow.fs as pafs

    local = build(tmp_path_factory.mktemp("source") / "photos")
    uri = s3_uri(s3, f"{S3_BUCKET}/source-test/photos")
    fs, prefix = pafs.FileSystem.from_uri(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        with fs.open_output_stream(f"{prefix}/{path.relative_to(local).as_posix()}") as f:
            f.write(path.read_bytes())
    return local, uri


def test_a_bucket_lists_and_reads_like_the_same_local_folder(bucket_tree):
    local, uri = bucket_tree
    remote = PhotoSource.parse(uri)
    assert not remote.is_local
    assert remote.display() == f"s3://{S3_BUCKET}/source-test/photos"
    listing = remote.walk()
    assert listing == PhotoSource.parse(local).walk()
    rels = [p for p, _ in listing[1]]
    for rel in rels:
        assert remote.read(rel, 10**6) == (local / rel).read_bytes()
    prints = remote.fingerprint([*rels, "daisy/gone.jpg"])
    assert [size for size, _ in prints] == [(local / rel).stat().st_size for rel in rels] + [-1]
    assert all(mtime > 0 for _, mtime in prints[:-1]) and prints[-1] == (-1, -1)


def test_bucket_reads_refuse_large_and_missing_files(bucket_tree):
    local, uri = bucket_tree
    remote = PhotoSource.parse(uri)
    size = (local / "roses/a.jpg").stat().st_size
    with pytest.raises(SourceError, match=f"larger than {size - 1} bytes"):
        remote.read("roses/a.jpg", size - 1)
    with pytest.raises(FileNotFoundError):
        remote.read("roses/gone.jpg", 1000)


def test_a_bucket_source_pickles_as_its_uri(bucket_tree):
    local, uri = bucket_tree
    remote = PhotoSource.parse(uri)
    state = pickle.dumps(remote)
    copy = pickle.loads(state)
    assert copy.location == uri and copy.walk() == remote.walk()
    assert copy.read("roses/a.jpg", 10**6) == (local / "roses/a.jpg").read_bytes()


def test_unusable_bucket_paths(bucket_tree, s3):
    with pytest.raises(SourceError, match="does not exist"):
        PhotoSource.parse(s3_uri(s3, f"{S3_BUCKET}/source-test/nothing-here")).walk()
    with pytest.raises(SourceError, match="is a file, not a folder"):
        PhotoSource.parse(s3_uri(s3, f"{S3_BUCKET}/source-test/photos/roses/a.jpg")).walk()
    with pytest.raises(SourceError, match="has no class folders"):
        PhotoSource.parse(s3_uri(s3, f"{S3_BUCKET}/source-test/photos/_unused")).walk()
