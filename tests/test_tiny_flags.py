"""``tiny_flags`` (tests/conftest.py): the tiny run's ``train`` flags, with overrides, switches and drops."""
from cli_flags import build_parser, flag_values
from tests.conftest import TINY_FLAG_SETTINGS, TINY_SETTINGS, tiny_flags


def given(flags):
    """The settings a ``train`` command line gives, as the CLI reads them (python names -> values)."""
    return flag_values(build_parser().parse_args(["train", *flags]))


def test_the_flags_give_the_tiny_settings_over_two_epochs():
    values = given(tiny_flags())
    assert values == {**{name: TINY_SETTINGS[name] for name in values if name != "epochs"}, "epochs": 2}
    assert set(values) == set(TINY_FLAG_SETTINGS)


def test_an_override_replaces_a_value_once_and_adds_a_new_flag():
    flags = tiny_flags(batch_size=2, val_fraction=0.25)
    assert flags.count("--batch-size") == 1
    assert given(flags)["batch_size"] == 2 and given(flags)["val_fraction"] == 0.25


def test_true_and_false_give_the_switch_and_its_negation():
    flags = tiny_flags(use_ema=True, pretrained=True, persistent_workers=False)
    assert "--use-ema" in flags and "--pretrained" in flags and "--no-persistent-workers" in flags
    assert "--no-pretrained" not in flags and "True" not in flags and "False" not in flags
    values = given(flags)
    assert values["use_ema"] is True and values["pretrained"] is True and values["persistent_workers"] is False


def test_none_drops_the_flag():
    flags = tiny_flags(lr=None, pretrained=None, synthetic_train_size=None)
    assert "--lr" not in flags and "--no-pretrained" not in flags and "--synthetic-train-size" not in flags
    assert {"lr", "pretrained", "synthetic_train_size"}.isdisjoint(given(flags))
    assert given(flags)["stage2_lr"] == TINY_SETTINGS["stage2_lr"]  # the others stay
