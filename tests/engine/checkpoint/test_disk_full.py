"""A disk that fills up at any byte of a checkpoint write: one OSError naming the checkpoint (the
CLI turns it into "the disk is full" and exit 2), the previous file intact, no temp file left.

torch.save's zip writer turns a failed write into its own RuntimeError ("unexpected pos") when it
closes, which used to replace the OSError: the run ended in a traceback that never said the disk
was full. Every write boundary of a real checkpoint is tried, and the bytes just after each.
"""
import errno
import io

import pytest

import engine.checkpoint.files as files
from engine.checkpoint import load_checkpoint
from engine.checkpoint.files import atomic_save
from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import TINY_TRAIN_FLAGS


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left (None: unlimited); records each write's size."""

    def __init__(self, handle, room, sizes):
        super().__init__(handle, "wb")
        self.room, self.sizes = room, sizes

    def write(self, data) -> int:
        size = len(memoryview(data))
        if self.room is not None and size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.room is not None:
            self.room -= size
        self.sizes.append(size)
        return super().write(data)


def disk_with_room(monkeypatch, room, sizes=None):
    sizes = [] if sizes is None else sizes
    monkeypatch.setattr(files, "_open_for_writing",
                        lambda handle: files._WriteErrorRecorder(FullDisk(handle, room, sizes)))
    return sizes


def write_offsets(monkeypatch, payload, path):
    """Every byte offset at which a raw write of this payload starts, and the file's size."""
    sizes = disk_with_room(monkeypatch, None)
    atomic_save(payload, path)
    offsets = [sum(sizes[:index]) for index in range(len(sizes))]
    return offsets, sum(sizes)


def test_a_full_disk_at_any_byte_of_the_write_is_one_oserror_and_keeps_the_old_file(tiny_run_dir, tmp_path,
                                                                                     monkeypatch):
    payload = load_checkpoint(tiny_run_dir / "last.pth")
    offsets, total = write_offsets(monkeypatch, payload, tmp_path / "probe.pth")
    target = tmp_path / "run" / "last.pth"
    target.parent.mkdir()
    target.write_bytes(b"the previous checkpoint")
    rooms = sorted({0, total - 1, *offsets, *(offset + 1 for offset in offsets)} - {total})
    assert len(rooms) > 8  # the zip writer writes in many pieces: the sweep reaches inside it
    for room in rooms:
        disk_with_room(monkeypatch, room)
        with pytest.raises(OSError) as raised:
            atomic_save(payload, target)
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target), room
        assert target.read_bytes() == b"the previous checkpoint", room
        assert [path.name for path in target.parent.iterdir()] == ["last.pth"], room


def test_training_that_fills_the_disk_mid_save_ends_on_one_line(tmp_path, monkeypatch):
    """Through the CLI: the first epoch's save fails halfway through the zip, exit 2, one line."""
    disk_with_room(monkeypatch, 4096)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", tmp_path / "ckpt")
    assert_refused(result, "the disk is full", "last.pth")


def test_a_full_disk_under_metrics_jsonl_names_that_file(tmp_path, monkeypatch):
    import builtins

    import engine.callbacks.run_log as run_log

    def full_open(path, mode="r", *args, **kwargs):
        stream = builtins.open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            def no_space(text):
                raise OSError(errno.ENOSPC, "No space left on device")
            stream.write = no_space
        return stream

    monkeypatch.setattr(run_log, "open", full_open, raising=False)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", tmp_path / "ckpt")
    assert_refused(result, "metrics.jsonl: the disk is full")


@pytest.fixture
def small_tmpfs(tmp_path):
    """Factory: a real tmpfs of ``size`` (e.g. ``"64k"``), where root may mount one; skipped elsewhere."""
    import subprocess

    mounts = []

    def make(size: str):
        folder = tmp_path / f"tmpfs-{size}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("size", ["64k", "3m"])
def test_training_on_a_really_full_disk_ends_on_one_line(size, small_tmpfs):
    """64 KB: the first save fails inside torch.save's zip; 3 MB: last.pth fits, best_model.pth not."""
    folder = small_tmpfs(size) / "ckpt"
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", folder, "--progress", "off")
    assert_refused(result, "the disk is full", str(folder))


def test_a_full_disk_under_tensorboard_names_its_folder(tmp_path, monkeypatch):
    """TensorBoard writes from a thread and re-raises its OSError, nameless, on a later call."""
    from torch.utils.tensorboard import SummaryWriter

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", no_space)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", tmp_path / "ckpt")
    assert_refused(result, f"{tmp_path / 'ckpt' / 'runs'}: the disk is full")
