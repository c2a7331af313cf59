"""Optional features of a run, each a ``Callback`` (the protocol and call order are in ``base``)."""
from engine.training.callback import Callback, CallbackList, Order, StepOutput

__all__ = ["Callback", "CallbackList", "Order", "StepOutput"]
