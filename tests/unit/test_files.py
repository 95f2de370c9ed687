"""Tests for pretix_agent.adapters.files: atomic writes, symlink refusal, exclusive create, read_small."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from pretix_agent.adapters import files
from pretix_agent.errors import FileWriteError


@pytest.fixture
def restrictive_umask():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------------------------------------
# write_atomic


def test_write_atomic_creates_a_file_with_the_data(tmp_path):
    files.write_atomic(tmp_path / "marker", b"on\n")
    assert (tmp_path / "marker").read_bytes() == b"on\n"


def test_write_atomic_replaces_content_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "marker"
    target.write_bytes(b"old content that is longer")
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["marker"]


def test_write_atomic_replaces_the_inode_so_readers_of_the_old_file_see_it_whole(tmp_path):
    target = tmp_path / "status.json"
    target.write_bytes(b"old")
    with open(target, "rb") as reader:
        files.write_atomic(target, b"new")
        assert reader.read() == b"old"
    assert target.read_bytes() == b"new"


def test_write_atomic_sets_group_writable_mode_despite_a_restrictive_umask(tmp_path, restrictive_umask):
    files.write_atomic(tmp_path / "marker", b"x")
    assert mode_of(tmp_path / "marker") == 0o664


def test_write_atomic_sets_the_requested_mode(tmp_path, restrictive_umask):
    files.write_atomic(tmp_path / "status.json", b"{}", mode=0o644)
    assert mode_of(tmp_path / "status.json") == 0o644


def test_write_atomic_writes_large_data_completely(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    files.write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_write_atomic_refuses_a_symlink_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "marker"
    link.symlink_to(victim)
    with pytest.raises(FileWriteError) as caught:
        files.write_atomic(link, b"overwritten")
    assert str(caught.value) == f"refusing to write {link}: it is a symlink; remove it by hand"
    assert victim.read_bytes() == b"precious"
    assert link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["marker", "victim"]


def test_write_atomic_refuses_a_dangling_symlink_and_does_not_create_its_target(tmp_path):
    link = tmp_path / "marker"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileWriteError):
        files.write_atomic(link, b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_write_atomic_into_a_missing_directory_raises_a_one_line_error(tmp_path):
    target = tmp_path / "missing" / "marker"
    with pytest.raises(FileWriteError) as caught:
        files.write_atomic(target, b"x")
    assert str(caught.value) == f"cannot write {target}: No such file or directory"
    assert "\n" not in str(caught.value)


def test_write_atomic_over_a_directory_fails_and_cleans_up(tmp_path):
    (tmp_path / "marker").mkdir()
    with pytest.raises(FileWriteError) as caught:
        files.write_atomic(tmp_path / "marker", b"x")
    assert "Is a directory" in str(caught.value)
    assert os.listdir(tmp_path) == ["marker"]


def test_write_atomic_failing_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def fail(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "rename", fail)
    with pytest.raises(FileWriteError) as caught:
        files.write_atomic(tmp_path / "marker", b"x")
    assert str(caught.value) == f"cannot write {tmp_path / 'marker'}: No space left on device"
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# create_exclusive


def test_create_exclusive_creates_a_missing_file(tmp_path, restrictive_umask):
    assert files.create_exclusive(tmp_path / "lock", b"who=alice\n") is True
    assert (tmp_path / "lock").read_bytes() == b"who=alice\n"
    assert mode_of(tmp_path / "lock") == 0o664
    assert os.listdir(tmp_path) == ["lock"]


def test_create_exclusive_returns_false_and_never_overwrites(tmp_path):
    (tmp_path / "lock").write_bytes(b"first")
    assert files.create_exclusive(tmp_path / "lock", b"second") is False
    assert (tmp_path / "lock").read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["lock"]


def test_create_exclusive_keeps_an_empty_existing_lock(tmp_path):
    (tmp_path / "lock").touch()
    assert files.create_exclusive(tmp_path / "lock", b"content") is False
    assert (tmp_path / "lock").read_bytes() == b""


def test_create_exclusive_refuses_a_symlink_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(FileWriteError):
        files.create_exclusive(tmp_path / "lock", b"x")
    assert victim.read_bytes() == b"precious"


def test_create_exclusive_into_a_missing_directory_raises_a_one_line_error(tmp_path):
    target = tmp_path / "missing" / "lock"
    with pytest.raises(FileWriteError) as caught:
        files.create_exclusive(target, b"x")
    assert str(caught.value) == f"cannot create {target}: No such file or directory"


@pytest.fixture
def fast_dir(tmp_path):
    """A directory on tmpfs where fsync costs nothing, so 200 rounds stay fast; tmp_path otherwise."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="pretix-agent-test-") as directory:
        yield Path(directory)


def test_two_threads_racing_create_exclusive_have_exactly_one_winner(fast_dir):
    tmp_path = fast_dir
    for round_number in range(200):
        target = tmp_path / f"lock{round_number}"
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def contender(name: str, target=target, barrier=barrier, results=results) -> None:
            barrier.wait()
            results[name] = files.create_exclusive(target, name.encode())

        threads = [threading.Thread(target=contender, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [name for name, won in results.items() if won]
        assert len(winners) == 1, (round_number, results)
        assert target.read_bytes() == winners[0].encode()
    assert len(os.listdir(tmp_path)) == 200  # and no temporary file left behind


# ---------------------------------------------------------------------------------------------
# remove


def test_remove_deletes_a_file_and_says_so(tmp_path):
    (tmp_path / "lock").write_bytes(b"x")
    assert files.remove(tmp_path / "lock") is True
    assert not (tmp_path / "lock").exists()


def test_remove_of_a_missing_file_returns_false(tmp_path):
    assert files.remove(tmp_path / "lock") is False


def test_remove_on_a_symlink_removes_the_link_not_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "lock").symlink_to(victim)
    assert files.remove(tmp_path / "lock") is True
    assert not (tmp_path / "lock").is_symlink()
    assert victim.read_bytes() == b"precious"


def test_remove_of_a_directory_raises_a_one_line_error(tmp_path):
    (tmp_path / "lock").mkdir()
    with pytest.raises(FileWriteError) as caught:
        files.remove(tmp_path / "lock")
    assert str(caught.value) == f"cannot remove {tmp_path / 'lock'}: Is a directory"


# ---------------------------------------------------------------------------------------------
# read_small


def test_read_small_of_an_absent_file_is_absent(tmp_path):
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (False, None, None)


def test_read_small_of_an_empty_file_is_present_and_empty(tmp_path):
    (tmp_path / "lock").touch()
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (True, b"", None)


def test_read_small_returns_the_content(tmp_path):
    (tmp_path / "lock").write_bytes(b"who=alice\nwhy=cut-off\n")
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (True, b"who=alice\nwhy=cut-off\n", None)


def test_read_small_of_a_symlink_is_present_with_an_error_and_is_not_followed(tmp_path):
    (tmp_path / "victim").write_bytes(b"secret")
    (tmp_path / "lock").symlink_to(tmp_path / "victim")
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (True, None, "it is a symlink")


def test_read_small_of_a_dangling_symlink_is_present_with_an_error(tmp_path):
    (tmp_path / "lock").symlink_to(tmp_path / "nowhere")
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.error) == (True, "it is a symlink")


def test_read_small_of_a_fifo_is_present_with_an_error_and_does_not_block(tmp_path):
    # Nobody ever opens the FIFO for writing: a blocking open would hang this test forever.
    os.mkfifo(tmp_path / "lock")
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (True, None, "not a regular file")


def test_read_small_of_a_directory_is_present_with_an_error(tmp_path):
    (tmp_path / "lock").mkdir()
    state = files.read_small(tmp_path / "lock")
    assert (state.present, state.content, state.error) == (True, None, "not a regular file")


def test_read_small_of_an_oversized_file_is_present_with_an_error(tmp_path):
    (tmp_path / "lock").write_bytes(b"x" * 101)
    state = files.read_small(tmp_path / "lock", limit=100)
    assert (state.present, state.content, state.error) == (True, None, "larger than 100 bytes")


def test_read_small_of_a_file_exactly_at_the_limit_is_read(tmp_path):
    (tmp_path / "lock").write_bytes(b"x" * 100)
    assert files.read_small(tmp_path / "lock", limit=100).content == b"x" * 100


def test_read_small_of_a_file_that_grew_after_fstat_reports_oversize_not_truncated_content(tmp_path, monkeypatch):
    (tmp_path / "lock").write_bytes(b"x" * 150)
    real_fstat = os.fstat

    def fstat_before_growth(fd):
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, info.st_ino, info.st_dev, info.st_nlink, info.st_uid, info.st_gid,
                               50, info.st_atime, info.st_mtime, info.st_ctime))

    monkeypatch.setattr(files.os, "fstat", fstat_before_growth)
    state = files.read_small(tmp_path / "lock", limit=100)
    assert (state.present, state.content, state.error) == (True, None, "larger than 100 bytes")


def test_read_small_below_a_regular_file_counts_as_present_with_the_os_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    state = files.read_small(tmp_path / "file" / "lock")
    assert (state.present, state.error) == (True, "Not a directory")
