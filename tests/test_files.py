"""pipeline.files: a local file is replaced whole or not at all, and no temporary name is left behind."""
import os

import pytest

from pipeline.files import TEMP_MARKER, atomic_open, temporary_name, write_atomic


def test_write_atomic_replaces_bytes_and_text(tmp_path):
    path = str(tmp_path / "a.json")
    write_atomic(path, b"old")
    write_atomic(path, "néw\n")
    with open(path, "rb") as f:
        assert f.read() == "néw\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["a.json"]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / "manifest.json")
    write_atomic(path, "complete")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half of a new")
            raise RuntimeError("crash mid-write")
    with open(path, encoding="utf-8") as f:
        assert f.read() == "complete"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_temporary_names_are_unique_and_marked(tmp_path):
    path = str(tmp_path / "x")
    a, b = temporary_name(path), temporary_name(path)
    assert a != b and TEMP_MARKER in a and a.startswith(path)


def test_only_whole_file_modes():
    with pytest.raises(ValueError, match="mode"):
        with atomic_open("/nonexistent/x", "a"):
            pass


def test_remove_listed_removes_exactly_the_list_and_never_follows_a_link(tmp_path):
    from pipeline.files import list_tree, remove_listed

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    (root / "top").write_text("x")
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("mine")
    (root / "a" / "link").symlink_to(elsewhere)
    files, folders = list_tree(str(root))
    assert files == ["a/b/f", "a/link", "top"] and folders == ["a", "a/b"]
    remove_listed(str(root), files, folders)
    assert list(root.iterdir()) == [] and (elsewhere / "keep").read_text() == "mine"
    (root / "d").mkdir()
    (root / "d" / "unlisted").write_text("x")
    with pytest.raises(OSError):
        remove_listed(str(root), [], ["d"])  # a folder still holding something unlisted is never emptied
    assert (root / "d" / "unlisted").exists()
