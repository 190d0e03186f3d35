"""Loading the user's receiver from ``module:attribute``, as uvicorn does."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import ConfigurationError
from .receiver import Receiver

__all__ = ["load_receiver"]


def load_receiver(target: str) -> Receiver:
    """Import ``module:attribute`` and return the Receiver it names."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"TARGET must look like module:attribute (e.g. app:receiver), not {target!r}."
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"Could not import module {module_name!r}; run the command from the directory "
                "that contains it, or check the spelling."
            ) from None
        raise
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"Module {module_name!r} has no attribute {attribute!r}; "
                "TARGET must name your Receiver, e.g. app:receiver."
            ) from None
    if not isinstance(obj, Receiver):
        raise ConfigurationError(
            f"{target} is a {type(obj).__name__}, not a mem0_receiver.Receiver."
        )
    return obj
