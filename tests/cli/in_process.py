"""Run ``train_ultimate.main`` in the test process (cheaper than a subprocess), restoring root logging."""
import logging

import train_ultimate


def run_main(*args) -> int:
    """``train_ultimate.main`` with ``args`` as strings; root handlers and level are put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return train_ultimate.main([str(arg) for arg in args])
    finally:
        root.handlers[:], root.level = handlers, level
