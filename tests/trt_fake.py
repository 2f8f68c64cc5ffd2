"""A fake ``tensorrt`` module generated from a real version's API surface (../shared/tensorrt-api).

Every class, method, property and enum member of that version exists; nothing else does. Reading
or writing a name the version lacks raises AttributeError, so code that calls a name absent from a
version's surface fails its test. Calls are recorded (``mod._calls``), and deprecated names used are
collected (``mod._deprecated_used``). Method results come from the signature's return annotation
(a fake instance of the named class, True, 0, ...), or from ``mod._behaviors[(Class, method)]``,
which a test sets where the code path needs a meaningful value.

On top of the names, ``documented_behaviours`` models what NVIDIA documents about the calls the code
relies on (each with its source), so a test can fail on behaviour, not only on a name:
- a DLA build needs a static profile (DLA restrictions: min = opt = max) and an existing core
  (``Builder.num_DLA_cores``); otherwise ``build_serialized_network`` returns None;
- a version-compatible plan deserializes only with ``Runtime.engine_host_code_allowed = True``
  (Polygraphy's engine loader sets it for exactly this); a plan from another TensorRT returns None;
- ``IBuilderConfig.set_timing_cache`` returns False for a cache from another device or version
  (NvInfer.h), and a corrupt file makes ``create_timing_cache`` raise;
- ``IExecutionContext.set_input_shape`` returns False outside the engine's profile.
``8.5.2`` is the 8.6.1 surface less what TensorRT 8.6 added (its release notes: builder optimization
levels, hardware and version compatibility, the lean runtime, auxiliary streams, temp-file control).
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any, Callable

API_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "tensorrt-api"
VERSIONS = ("8.6.1", "10.3.0", "10.16.1.11", "11.4.0.106")
#: what TensorRT 8.6 added over 8.5 (8.6.0 release notes), removed to model JetPack 5.1's 8.5.2
ADDED_IN_86 = {
    "IBuilderConfig": ("builder_optimization_level", "hardware_compatibility_level", "max_aux_streams",
                       "plugins_to_serialize", "runtime_platform"),
    "Runtime": ("engine_host_code_allowed", "load_runtime", "tempfile_control_flags", "temporary_directory"),
    "BuilderFlag": ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"),
    None: ("HardwareCompatibilityLevel", "TempfileControlFlag", "RuntimePlatform"),
}


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


def _surface(version: str) -> dict:
    if version == "11.4.1":
        # no 11.4.1 bindings dump is at hand: its Python surface is taken as 11.4.0's, under 11.4.1's version
        # (the release that brings DLA back on Jetson AGX Orin, TensorRT 11.4.1 "Working with DLA")
        spec = json.loads((API_DIR / "tensorrt-11.4.0.106.json").read_text())
        spec["version"] = "11.4.1"
        return spec
    if version == "8.5.2":
        spec = json.loads((API_DIR / "tensorrt-8.6.1.json").read_text())
        spec["version"] = "8.5.2.2"
        names = spec["module_names"]
        for owner, drop in ADDED_IN_86.items():
            for n in drop:
                if owner is None:
                    names.pop(n, None)
                elif names[owner].get("kind") == "enum":
                    names[owner]["members"] = [m for m in names[owner].get("members", [])
                                               if (m["name"] if isinstance(m, dict) else m) != n]
                else:
                    names[owner].get("attributes", {}).pop(n, None)
        return spec
    return json.loads((API_DIR / f"tensorrt-{version}.json").read_text())


def make_fake_trt(version: str, behaviours: bool = True) -> types.ModuleType:
    spec = _surface(version)
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
            attrs["__bytes__"] = lambda self: self.__dict__.get("_payload", b"fake-serialized-engine")
            attrs["__buffer__"] = lambda self, flags: memoryview(bytes(self))
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
    mod._num_dla_cores = 2
    mod._errors = []
    if behaviours:
        documented_behaviours(mod)
    return mod


PLAN_MAGIC = b"fake-serialized-engine"


def _new(mod: types.ModuleType, cls: str, **values: Any) -> Any:
    c = getattr(mod, cls)
    obj = c.__new__(c)
    obj.__dict__["_values"] = dict(values)
    return obj


def documented_behaviours(mod: types.ModuleType) -> None:
    """What NVIDIA documents about the calls ghostedge makes (see the module docstring)."""
    b = mod._behaviors

    def flags_set() -> set[str]:
        return {c[2][0].name for c in mod._calls if c[0] == "IBuilderConfig" and c[1] == "set_flag"}

    def last_profile() -> tuple | None:
        shapes = [c[2] for c in mod._calls if c[0] == "IOptimizationProfile" and c[1] == "set_shape"]
        return shapes[-1][1:] if shapes else None

    def build(builder: Any, network: Any, config: Any) -> Any:
        vals = config.__dict__.get("_values", {})
        dla = vals.get("default_device_type") == mod.DeviceType.DLA
        prof = last_profile()
        if dla and prof and len({tuple(p) for p in prof}) != 1 and "GPU_FALLBACK" not in flags_set():
            mod._errors.append("DLA: dynamic shapes are not supported (min = opt = max required)")
            return None
        if dla and not 0 <= int(vals.get("DLA_core", 0)) < mod._num_dla_cores:
            mod._errors.append("DLA core out of range")
            return None
        payload = {"version": mod.__version__, "vc": "VERSION_COMPATIBLE" in flags_set(),
                   "dla_core": vals.get("DLA_core") if dla else None, "profile": [list(p) for p in prof or []]}
        hm = _new(mod, "IHostMemory")
        hm.__dict__["_payload"] = PLAN_MAGIC + json.dumps(payload).encode()
        return hm

    def deserialize(runtime: Any, data: Any) -> Any:
        data = bytes(data)
        if not data.startswith(PLAN_MAGIC):
            return None
        meta = json.loads(data[len(PLAN_MAGIC):] or b"{}")
        rv = runtime.__dict__.get("_values", {})
        if meta.get("version", mod.__version__) != mod.__version__ and not meta.get("vc"):
            mod._errors.append("engine plan built by another TensorRT version")
            return None
        if meta.get("vc") and not rv.get("engine_host_code_allowed"):
            mod._errors.append("version-compatible plan needs engine_host_code_allowed")
            return None
        eng = _new(mod, "ICudaEngine")
        eng.__dict__["_meta"] = meta
        eng.__dict__["_runtime_dla_core"] = rv.get("DLA_core", -1)
        return eng

    def create_timing_cache(config: Any, data: Any) -> Any:
        data = bytes(data)
        if data.startswith(b"corrupt"):
            raise RuntimeError("invalid timing cache")
        tc = _new(mod, "ITimingCache")
        tc.__dict__["_data"] = data
        return tc

    def set_timing_cache(config: Any, cache: Any, ignore_mismatch: bool) -> bool:
        ok = not cache.__dict__.get("_data", b"").startswith(b"other-device")
        if ok:
            config.__dict__["_cache"] = cache
        return ok

    def serialize_cache(cache: Any) -> Any:
        hm = _new(mod, "IHostMemory")
        hm.__dict__["_payload"] = b"timing-cache:" + mod.__version__.encode()
        return hm

    b[("Builder", "build_serialized_network")] = build
    b[("Builder", "num_DLA_cores")] = lambda self: mod._num_dla_cores
    b[("Runtime", "deserialize_cuda_engine")] = deserialize
    b[("IBuilderConfig", "create_timing_cache")] = create_timing_cache
    b[("IBuilderConfig", "set_timing_cache")] = set_timing_cache
    b[("IBuilderConfig", "get_timing_cache")] = lambda self: self.__dict__.get("_cache")
    b[("ITimingCache", "serialize")] = serialize_cache


def called(mod: types.ModuleType, cls: str, method: str) -> list[tuple]:
    return [c for c in mod._calls if c[0] == cls and c[1] == method]
