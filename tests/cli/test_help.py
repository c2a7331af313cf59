"""Every command's --help: a description, examples that parse, a pointer to configs/ and guides/,
clean metavars, a choice for every enumerated setting, and no benchmark figures."""
import re
import shlex

import pytest

from cli_flags import TRAIN_FLAGS, build_parser
from engine.config import AMP_MODES, BEST_METRICS, CACHE_MODES, DEVICES, NORMALIZATION_MODES, PROGRESS_MODES, SCHEDULERS

COMMANDS = ("train", "synth", "eval", "predict", "export", "report")


def sub_parser(command):
    parser = build_parser()
    return next(action for action in parser._actions if action.dest == "command").choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_a_description_examples_and_where_to_read_more(command):
    text = sub_parser(command).format_help()
    assert sub_parser(command).description, command
    assert "examples:" in text and "configs/" in text and "guides/" in text
    examples = re.findall(rf"python train_ultimate.py ({command} .+)", text)
    assert examples
    for example in examples:
        build_parser().parse_args(shlex.split(example))  # each example parses


@pytest.mark.parametrize("command", COMMANDS)
def test_metavars_are_words_not_upper_cased_flag_names(command):
    text = sub_parser(command).format_help()
    noisy = re.findall(r"--[\w-]+ ([A-Z]+_[A-Z_]+)\b", text)
    assert not noisy, noisy
    for action in sub_parser(command)._actions:
        if action.option_strings and action.nargs != 0 and action.choices is None:
            assert action.metavar is not None, f"{command} {action.option_strings[0]} shows its dest as metavar"


def test_every_enumerated_setting_is_a_choice():
    parser = sub_parser("train")
    choices = {action.dest: tuple(action.choices) for action in parser._actions if action.choices}
    assert choices == {"scheduler": SCHEDULERS, "device": DEVICES, "amp": AMP_MODES, "cache": CACHE_MODES,
                       "progress": PROGRESS_MODES, "best_metric": BEST_METRICS,
                       "loss_normalization": NORMALIZATION_MODES}


def test_help_texts_hold_no_benchmark_figures():
    parser = build_parser()
    texts = [text for flags in TRAIN_FLAGS.values() for _, _, text in flags]
    for command in COMMANDS:
        texts += [action.help or "" for action in sub_parser(command)._actions]
    figures = [text for text in texts if re.search(r"measured|\d+(\.\d+)?x (vs|over|faster|slower)", text)]
    assert not figures, figures


def test_batch_sizes_say_they_are_per_gpu():
    help_texts = {flag: text for flags in TRAIN_FLAGS.values() for flag, _, text in flags}
    assert "per GPU" in help_texts["batch-size"] and "per GPU" in help_texts["stage2-batch-size"]
