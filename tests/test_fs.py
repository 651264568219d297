"""File safety: atomic writes leave no debris, and only files tern_jax wrote are replaced."""

import os

import pytest

from tern_jax import fs


def test_write_text_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "config.json"
    fs.write_text_atomic(target, "first")
    fs.write_text_atomic(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    fs.write_text_atomic(target, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fs.write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_a_missing_folder_names_the_users_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path}/no/such.txt: the folder "
                       f"{tmp_path}/no does not exist"):
        fs.write_text_atomic(tmp_path / "no" / "such.txt", "x")


def test_write_owned_bytes_refuses_a_users_file_and_replaces_its_own(tmp_path):
    users = tmp_path / "curves.png"
    users.write_bytes(b"my own figure")
    with pytest.raises(fs.NotOwnedError, match=f"{users} is an existing file that tern_jax did "
                       "not write as a plot"):
        fs.write_owned_bytes(users, b"ours", what="a plot")
    assert users.read_bytes() == b"my own figure"
    assert sorted(os.listdir(tmp_path)) == ["curves.png"]

    ours = tmp_path / "ours.png"
    fs.write_owned_bytes(ours, b"v1")
    assert fs.owned_file(ours)
    fs.write_owned_bytes(ours, b"v2")
    assert ours.read_bytes() == b"v2" and fs.owned_file(ours)
    ours.write_bytes(b"edited by hand")  # changed since: no longer ours
    assert not fs.owned_file(ours)
    with pytest.raises(fs.NotOwnedError):
        fs.write_owned_bytes(ours, b"v3")
    assert ours.read_bytes() == b"edited by hand"


def test_check_replaceable_refuses_symlinks_and_allows_absent_paths(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(fs.NotOwnedError, match="link"):
        fs.check_replaceable(tmp_path / "link", lambda p: True, "a thing")
    assert fs.check_replaceable(tmp_path / "absent", lambda p: False, "a thing") is False
    assert fs.check_replaceable(tmp_path / "real", lambda p: True, "a thing") is True


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """config.json and results.json (atomic) match metrics.jsonl (appended with open)."""
    from tern_jax.train import metrics

    old = os.umask(0o022)
    try:
        fs.write_text_atomic(tmp_path / "config.json", "{}")
        fs.write_bytes_atomic(tmp_path / "results.json", b"{}")
        metrics.append(tmp_path / "metrics.jsonl", {"epoch": 1})
        os.umask(0o077)
        fs.write_text_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o644, "results.json": 0o644, "metrics.jsonl": 0o644,
                     "private.json": 0o600}
