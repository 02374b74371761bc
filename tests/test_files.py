"""Atomic writes (the new file or the old one, never half of one, nothing left behind on failure); safe names."""

from __future__ import annotations

import stat

import pytest

from conceptvault.files import atomic_path, atomic_write, atomic_write_text, slug


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "deep" / "figures.json"
    atomic_write_text(target, "first")
    atomic_write(target, b"second", mode=0o600)
    assert target.read_text() == "second" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["figures.json"]


def test_a_failed_or_interrupted_write_leaves_the_old_file_and_no_litter(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    for failure in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with atomic_path(target) as temporary:
                temporary.write_bytes(b"half")
                raise failure
        assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_slugs_are_file_name_safe():
    assert slug("Five-pointed Star") == "five-pointed-star"
    assert slug("St. Heart!") == "st-heart"
    assert len(slug("星")) == 12
