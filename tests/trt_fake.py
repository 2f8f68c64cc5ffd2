"""A fake ``tensorrt`` module generated from a real version's API surface (../shared/tensorrt-api).

Every class, method, property and enum member of that version exists; nothing else does. Reading
or writing a name the version lacks raises AttributeError, so code that calls a name absent from a
version's surface fails its test. Calls are recorded (``mod._calls``), and deprecated names used are
collected (``mod._deprecated_used``). Method results come from the signature's return annotation
(a fake instance of the named class, True, 0, ...), or from ``mod._behaviors[(Class, method)]``,
which a test sets where the code path needs a meaningful value. This checks API names and arity
per version, not TensorRT's behaviour.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any, Callable

API_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "tensorrt-api"
VERSIONS = ("8.6.1", "10.3.0", "10.16.1.11", "11.4.0.106")


def available_versions() -> list[str]:
    return [v for v in VERSIONS if (API_DIR / f"tensorrt-{v}.json").is_file()]


class _EnumMember:
    def __init__(self, enum: str, name: str, value: int):
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EnumMember) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"<{self.enum}.{self.name}: {self.value}>"


def _ret_type(sig: str) -> str:
    m = re.search(r"->\s*(.+)$", sig or "")
    return m.group(1).strip() if m else "None"


def _n_params(sig: str) -> int | None:
    m = re.match(r"[\w_]+\((.*)\)\s*(->|$)", sig or "")
    if not m or "*args" in m.group(1):
        return None
    params = [p for p in re.split(r",\s*(?![^\[]*\])", m.group(1)) if p.strip()]
    return len(params) - 1 if params and params[0].strip().startswith("self") else len(params)


def make_fake_trt(version: str) -> types.ModuleType:
    spec = json.loads((API_DIR / f"tensorrt-{version}.json").read_text())
    names: dict = spec["module_names"]
    mod = types.ModuleType("tensorrt")
    mod.__version__ = spec["version"]
    mod._calls = []
    mod._deprecated_used = set()
    mod._behaviors: dict[tuple[str, str], Callable[..., Any]] = {}

    def default_for(rtype: str) -> Any:
        rt = rtype.replace("typing.", "")
        if rt in ("bool",):
            return True
        if rt in ("int", "SupportsInt", "float"):
            return 0
        if rt == "str":
            return ""
        if rt.lower().startswith(("list", "tuple")):
            return []
        m = re.search(r"(?:tensorrt\.|nvinfer1::|nvonnxparser::)(\w+)", rt)
        if m:
            # 8.6 docstrings print C++ names (nvinfer1::IEngineInspector is the Python EngineInspector)
            cls = getattr(mod, m.group(1), None) or getattr(mod, m.group(1)[1:], None)
            if isinstance(cls, type):
                return cls.__new__(cls)
            if m.group(1) == "IParserError":
                return "parser error"
        return None

    def make_enum(ename: str, members: list) -> type:
        attrs = {}
        for mbr in members:
            if isinstance(mbr, dict):
                attrs[mbr["name"]] = _EnumMember(ename, mbr["name"], int(mbr["value"]))
            else:
                attrs[mbr] = _EnumMember(ename, mbr, len(attrs))
        deprecated = {m["name"] for m in members if isinstance(m, dict) and m.get("deprecated")}
        attrs["__members__"] = dict(attrs)  # as pybind11 enums have

        class _Meta(type):
            def __getattribute__(cls, item: str) -> Any:
                if item in deprecated:
                    mod._deprecated_used.add(f"{ename}.{item}")
                return type.__getattribute__(cls, item)

        return _Meta(ename, (), attrs)

    def make_class(cname: str, cspec: dict) -> type:
        attrs: dict[str, Any] = {}
        props = set()
        for aname, a in cspec.get("attributes", {}).items():
            kind = a.get("kind")
            if aname in ("__init__", "__enter__", "__exit__"):
                continue
            if kind == "method":
                def method(self: Any, *args: Any, _a=aname, _s=a, **kw: Any) -> Any:
                    n = _n_params(_s.get("sig", ""))
                    if n is not None and len(args) + len(kw) > n:
                        raise TypeError(f"{cname}.{_a}() takes {n} arguments, got {len(args) + len(kw)}")
                    mod._calls.append((cname, _a, args, kw))
                    if _s.get("deprecated"):
                        mod._deprecated_used.add(f"{cname}.{_a}")
                    fn = mod._behaviors.get((cname, _a))
                    if fn is not None:
                        return fn(self, *args, **kw)
                    sig = _s.get("sig", "")
                    if "*args" in sig and _s.get("overloads"):
                        sig = _s["overloads"][0]
                    return default_for(_ret_type(sig))
                attrs[aname] = method
            elif kind == "property":
                props.add(aname)

                def getter(self: Any, _a=aname, _s=a) -> Any:
                    if _s.get("deprecated"):
                        mod._deprecated_used.add(f"{cname}.{_a}")
                    fn = mod._behaviors.get((cname, _a))
                    if fn is not None:
                        return fn(self)
                    if _a in self.__dict__.get("_values", {}):
                        return self.__dict__["_values"][_a]
                    return default_for(_ret_type(_s.get("sig", "")))

                def setter(self: Any, value: Any, _a=aname, _s=a) -> None:
                    if _s.get("deprecated"):
                        mod._deprecated_used.add(f"{cname}.{_a}")
                    mod._calls.append((cname, f"{_a}=", (value,), {}))
                    self.__dict__.setdefault("_values", {})[_a] = value
                attrs[aname] = property(getter, setter)
            elif kind == "enum":
                attrs[aname] = make_enum(aname, a.get("members", []))
            elif kind == "attribute":
                m = re.search(r"<\w+\.(\w+): (\d+)>", a.get("repr", ""))
                attrs[aname] = _EnumMember(a.get("type", "?"), m.group(1), int(m.group(2))) if m else None

        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            mod._calls.append((cname, "__init__", args, kw))
            if cspec.get("deprecated"):
                mod._deprecated_used.add(cname)

        def __setattr__(self: Any, key: str, value: Any, _props=props) -> None:
            # a Python subclass (a logger, a calibrator) may keep its own state; a binding may not
            if key in _props or key.startswith("_") or type(self).__module__ != "tensorrt_fake":
                object.__setattr__(self, key, value)
                return
            raise AttributeError(f"tensorrt {mod.__version__}: {cname} has no attribute {key!r}")

        attrs["__init__"] = __init__
        attrs["__setattr__"] = __setattr__
        attrs["_fake_props"] = props
        if cname in ("IHostMemory",):
            attrs["__bytes__"] = lambda self: b"fake-serialized-engine"
            attrs["__buffer__"] = lambda self, flags: memoryview(b"fake-serialized-engine")
        return type(cname, (), attrs)

    # classes first as placeholders so return types resolve, enums, then functions / constants
    for name, s in names.items():
        kind = s.get("kind")
        if kind == "enum":
            setattr(mod, name, make_enum(name, s.get("members", [])))
    for name, s in names.items():
        if s.get("kind") == "class":
            cls = make_class(name, s)
            cls.__module__ = "tensorrt_fake"
            setattr(mod, name, cls)
    for name, s in names.items():
        if s.get("kind") == "function" and not hasattr(mod, name):
            setattr(mod, name, lambda *a, _n=name, **k: mod._calls.append(("tensorrt", _n, a, k)))
    return mod


def called(mod: types.ModuleType, cls: str, method: str) -> list[tuple]:
    return [c for c in mod._calls if c[0] == cls and c[1] == method]
