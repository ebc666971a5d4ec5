"""Import an app from a ``module:attribute`` string: the one importer behind
``--handler`` and ``--asgi`` alike, and behind the choice of app adapter.

Each adapter checks what it got (an async function, an ASGI callable, ...);
this module only finds it and says clearly why it could not.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback


class AppLoadError(Exception):
    """The app could not be imported, or is not what its option asks for.
    The worker exits with status 2 and this message."""


def import_from_string(spec: str, option: str = "the import string",
                       form: str = "module:attribute"):
    """Import ``module:attr`` (`attr` may be dotted) and return the attribute.

    `option` names where `spec` came from and `form` what it should look like,
    for the messages: an AppLoadError says which part failed, and quotes the
    traceback of a module that raised on import (SystemExit included).
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise AppLoadError("%s %r must be of the form %s" % (option, spec, form))
    try:
        target = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit from a module body too: report, exit 2
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise AppLoadError("cannot import module %r for %s %r:\n%s"
                           % (module_name, option, spec, detail.rstrip())) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise AppLoadError("%s %r: %r has no attribute %r"
                               % (option, spec, getattr(target, "__name__", target),
                                  attr)) from None
    return target


def load_app(spec: str, search_paths, option: str, form: str):
    """Import the user's app `spec` as import_from_string does, once the
    directories `search_paths` and the current directory are at the front of
    ``sys.path`` (in that order): the user's modules then win over any module
    of the same name on the interpreter's own path."""
    for path in reversed([*search_paths, os.getcwd()]):
        sys.path.insert(0, os.path.abspath(path))
    return import_from_string(spec, option, form)
