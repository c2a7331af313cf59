"""A stand-in for the Trainer services that callbacks use, for unit tests of single callbacks."""
from types import SimpleNamespace


def fake_trainer(writer=None, **attributes):
    """``log_scalar`` into ``writer.add_scalar`` (None: no log sink, ``is_logging`` False), rank 0,
    plus any Trainer ``attributes`` the callback under test reads (``epoch``, ``plan``, ...)."""
    log_scalar = writer.add_scalar if writer is not None else (lambda tag, value, step: None)
    return SimpleNamespace(log_scalar=log_scalar, is_logging=writer is not None,
                           data=SimpleNamespace(is_main_process=True), **attributes)
