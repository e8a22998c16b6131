"""Builds nothing has used for `UNUSED_SECONDS` are removed with their companions; the one in use
(marked used as they are looked at) and those used lately stay."""

from __future__ import annotations

import os
import time

from chatapp.support.stale_files import UNUSED_SECONDS, mark_used, remove_unused


def aged(path, seconds):
    """`path` with its modification time `seconds` ago, as if last used then."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_builds_unused_for_long_go_with_their_companions(tmp_path):
    current = tmp_path / "int4_vnni-aaaa.so"
    current.write_bytes(b"in use")
    aged(current, 2 * UNUSED_SECONDS)
    old = tmp_path / "int4_vnni-bbbb.so"
    old.write_bytes(b"old")
    (tmp_path / "int4_vnni-bbbb.so.sha256").write_text("sum")
    aged(old, UNUSED_SECONDS + 60)
    recent = tmp_path / "int4_vnni-cccc.so"
    recent.write_bytes(b"an older checkout's, loaded an hour ago")
    aged(recent, 3600)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not a build")
    aged(unrelated, 2 * UNUSED_SECONDS)

    assert remove_unused(tmp_path, "int4_vnni-*.so", keep=current) == [old]
    assert time.time() - current.stat().st_mtime < 60  # the build in use is marked used
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4_vnni-aaaa.so", "int4_vnni-cccc.so", "notes.txt"]


def test_a_build_folder_marked_used_stays(tmp_path):
    kept, other = tmp_path / "blocks-avx512-torch2.13.0-1111", tmp_path / "blocks-avx2-torch2.13.0-2222"
    for folder in (kept, other):
        folder.mkdir()
        (folder / "lib.so").write_bytes(b"built")
        aged(folder, 2 * UNUSED_SECONDS)
    mark_used(other)  # loaded just now by another chatapp
    assert remove_unused(tmp_path, "blocks-*", keep=kept) == []
    aged(other, 2 * UNUSED_SECONDS)
    assert remove_unused(tmp_path, "blocks-*", keep=kept) == [other]
    assert not other.exists() and (kept / "lib.so").exists()


def test_a_model_cache_s_unused_copies_go_each_on_its_own(tmp_path):
    # A converted copy's name is the start of its facts memo's: without companions, each is kept
    # or removed by its own use (the memo of a model read natively is used while its whole copy
    # is not).
    header, whole = tmp_path / "model-1234-header", tmp_path / "model-1234"
    memo = tmp_path / "model-1234.gguf-facts.json"
    for folder in (header, whole):
        folder.mkdir()
        aged(folder, 2 * UNUSED_SECONDS)
    memo.write_text("{}")
    aged(memo, 2 * UNUSED_SECONDS)
    mark_used(memo)
    assert remove_unused(tmp_path, "*", keep=header, companions=False) == [whole]
    assert header.exists() and memo.exists() and not whole.exists()
