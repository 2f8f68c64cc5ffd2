"""timm's own GhostNet code as the reference the V2/V3 tests compare against.

timm imports torchvision at module level (timm.layers, timm.data), and torchvision has no wheel for this
project's CPU-only torch; GhostNet's model code uses none of it. ``import_timm_ghostnet`` therefore puts an
inert placeholder package under the name ``torchvision`` (every attribute a distinct empty class, nothing
callable that computes) before importing ``timm.models.ghostnet``, and only when the real torchvision is
absent. Install the reference with ``pip install --no-deps timm==1.0.31`` (the ``reference`` extra).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        subs = cls.__dict__["_subs"]
        if name not in subs:
            subs[name] = _Placeholder(name, (), {"_subs": {}})
        return subs[name]


class _Module(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        v = _Placeholder(name, (), {"_subs": {}})
        setattr(self, name, v)
        return v


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _Module(spec.name)
        m.__path__ = []
        m.__version__ = "0.0+placeholder"
        return m

    def exec_module(self, module) -> None:
        pass


def import_timm_ghostnet():
    """timm.models.ghostnet, or None where timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    if importlib.util.find_spec("torchvision") is None and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    import timm.models.ghostnet as tg

    return tg
