"""Registry of worker models: name -> class, imported only when chosen.

Loading lazily keeps gevent out of the threads model and off the start-up path of
commands that serve nothing.
"""

from __future__ import annotations

import importlib

from sitepeek.workers.base import WorkerModel

_REGISTRY: dict[str, tuple[str, str]] = {
    "greenlets": ("sitepeek.workers.greenlets", "GreenletWorkers"),
    "threads": ("sitepeek.workers.threads", "ThreadWorkers"),
    "processes": ("sitepeek.workers.processes", "ProcessWorkers"),
}


def load(name: str) -> type[WorkerModel]:
    """The worker model class registered as ``name``; raises KeyError if unknown."""
    module_name, class_name = _REGISTRY[name]
    cls: type[WorkerModel] = getattr(importlib.import_module(module_name), class_name)
    return cls
