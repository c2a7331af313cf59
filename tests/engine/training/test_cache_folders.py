"""Where the disk resize cache writes: never into a read-only folder (a Kaggle input)."""
import logging

from engine.training.data_module import cache_folders


def test_a_read_only_cache_dir_is_read_and_a_writable_one_takes_the_misses(tiny_config, tmp_path, read_only_view,
                                                                          caplog):
    (tmp_path / "old-cache").mkdir()
    view = read_only_view(tmp_path / "old-cache")
    config = tiny_config(cache="disk", cache_dir=str(view))
    with caplog.at_level(logging.WARNING, logger="engine.training.data_module"):
        writable, read_only = cache_folders(config)
    assert writable == str(tmp_path / "ckpt" / "resize-cache") and read_only == [view]
    assert "not writable" in caplog.text and str(view) in caplog.text


def test_continuing_reads_the_previous_outputs_cache(tiny_config, tmp_path):
    previous = tmp_path / "input" / "notebook"
    (previous / "checkpoints" / "resize-cache").mkdir(parents=True)
    config = tiny_config(cache="disk", continue_from=str(previous))
    writable, read_only = cache_folders(config)
    assert writable == str(tmp_path / "ckpt" / "resize-cache")
    assert read_only == [previous / "checkpoints" / "resize-cache"]


def test_a_writable_cache_dir_is_used_as_it_is(tiny_config, tmp_path):
    config = tiny_config(cache="disk", cache_dir=str(tmp_path / "cache"))
    assert cache_folders(config) == (str(tmp_path / "cache"), [])
