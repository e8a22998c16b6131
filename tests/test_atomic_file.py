"""Atomic writes give the file the mode a plain write would: the user's umask, or the old file's."""

from __future__ import annotations

import os
import stat

import pytest

from chatapp.storage.export import export_chat
from chatapp.support.atomic_file import atomic_write
from tests.chat_samples import rich_chat


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode_as_open_would_give_it(tmp_path, umask_022):
    atomic_write(tmp_path / "a.txt", b"x")
    with open(tmp_path / "plain.txt", "wb") as handle:
        handle.write(b"x")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt") == 0o644  # mkstemp alone gives 0600


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "a.txt"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o640


def test_an_export_is_readable_like_any_file_the_user_saves(tmp_path, umask_022):
    export_chat(rich_chat(), tmp_path / "chat.md")
    assert mode(tmp_path / "chat.md") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["chat.md"]  # no temporary file left
