"""CUDA for the runners: the few runtime calls they need over cuda-python (cudart) or pycuda, and a probe of
whether this machine has a usable GPU. Apart from TensorRT, as Polygraphy keeps ``polygraphy/cuda`` apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GhostedgeError

# ---------------------------------------------------------------------------------------------
# CUDA: cuda-python first, pycuda where that is what the board has

class Cuda:
    """The few CUDA runtime calls a runner needs, over cuda-python (cudart) or pycuda.

    cudart calls use the signatures shared by cuda-python 11.8 (JetPack 5), 12.x and 13.x
    (``tests/test_cuda_python.py`` calls each against the real packages).
    """

    def __init__(self, cudart: Any = None) -> None:
        self.cudart = cudart
        self.pycuda = None
        if cudart is not None:
            return
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (and 11.8.7)
            except ImportError:
                from cuda import cudart  # older cuda-python
            self.cudart = cudart
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401
                import pycuda.driver as drv
                self.pycuda = drv
            except ImportError:
                raise GhostedgeError("no CUDA Python binding: pip install cuda-python (or use the board's "
                                     "pycuda) to run TensorRT engines") from None
            except Exception as e:  # pycuda.autoinit raises its own errors without a device / driver
                raise GhostedgeError(f"pycuda could not start CUDA ({e}): check the driver with nvidia-smi / "
                                     "tegrastats") from None

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.cudart, name)(*args)
        except RuntimeError as e:
            # cuda-python 11.8 without a driver: "Failed to dlopen libcuda.so.1" on the first call, then
            # 'Function "cuInit" not found' (a driver-API symbol missing: there is no libcuda)
            if re.search(r'libcuda|Function "cu\w+" not found', str(e)):
                raise CudaAbsent(f"{NO_DRIVER} ({name}: {e})") from None
            raise GhostedgeError(f"CUDA is unusable here ({name}: {e}): install the NVIDIA driver, or run on the "
                                 "GPU machine / Jetson") from None

    def _ck(self, res: Any, what: str = "CUDA call") -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise GhostedgeError(f"{what} failed: {_err_name(err)}: {_cuda_hint(err)}")
        if isinstance(res, tuple):
            return res[1] if len(res) == 2 else res[1:]
        return None

    def device_count(self) -> int:
        """0 when there is no device; ``CudaAbsent`` when no NVIDIA driver is loaded at all; any other CUDA error
        is raised with its name (a driver too old for this cuda-python is not "no GPU").

        Without a driver the real cuda-bindings 12.9.4 / 13.4.4 return cudaErrorInsufficientDriver from
        cudaGetDeviceCount while cudaDriverGetVersion returns (cudaSuccess, 0) (observed here, on a machine with
        no driver); 11.8.7 raises RuntimeError "Failed to dlopen libcuda.so.1" (``tests/test_cuda_python.py``).
        Only a non-zero driver version makes InsufficientDriver a too-old driver."""
        if self.cudart is not None:
            err, n = self._call("cudaGetDeviceCount")
            if int(err) == 0:
                return int(n)
            if "NoDevice" in _err_name(err):
                return 0
            if "InsufficientDriver" in _err_name(err):
                derr, drv = self._call("cudaDriverGetVersion")
                if int(derr) == 0 and not drv:
                    raise CudaAbsent(f"{NO_DRIVER} (cudaGetDeviceCount: {_err_name(err)}, driver version 0)")
                raise GhostedgeError(f"cudaGetDeviceCount failed: {_err_name(err)}: the driver supports CUDA "
                                     f"{_cuda_ver(int(drv or 0))}; {_cuda_hint(err)}")
            raise GhostedgeError(f"cudaGetDeviceCount failed: {_err_name(err)}: {_cuda_hint(err)}")
        return self.pycuda.Device.count()

    def malloc(self, nbytes: int) -> int:
        if self.cudart is not None:
            return int(self._ck(self._call("cudaMalloc", nbytes), f"cudaMalloc({nbytes})"))
        return self.pycuda.mem_alloc(nbytes)

    def free(self, ptr: Any) -> None:
        if self.cudart is not None:
            self._call("cudaFree", ptr)
        else:
            ptr.free()

    def stream(self) -> Any:
        if self.cudart is not None:
            return self._ck(self._call("cudaStreamCreate"), "cudaStreamCreate")
        return self.pycuda.Stream()

    def stream_handle(self, st: Any) -> int:
        return int(st) if self.cudart is not None else st.handle

    def h2d(self, dst: Any, arr: np.ndarray, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaMemcpyAsync", dst, arr.ctypes.data, arr.nbytes,
                                self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, st), "cudaMemcpyAsync")
        else:
            self.pycuda.memcpy_htod_async(dst, arr, st)

    def d2h(self, arr: np.ndarray, src: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaMemcpyAsync", arr.ctypes.data, src, arr.nbytes,
                                self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync")
        else:
            self.pycuda.memcpy_dtoh_async(arr, src, st)

    def sync(self, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaStreamSynchronize", st), "cudaStreamSynchronize")
        else:
            st.synchronize()

    def event(self) -> Any:
        if self.cudart is not None:
            return self._ck(self._call("cudaEventCreate"), "cudaEventCreate")
        return self.pycuda.Event()

    def record(self, ev: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaEventRecord", ev, st), "cudaEventRecord")
        else:
            ev.record(st)

    def elapsed_ms(self, a: Any, b: Any) -> float:
        if self.cudart is not None:
            self._ck(self._call("cudaEventSynchronize", b), "cudaEventSynchronize")
            return float(self._ck(self._call("cudaEventElapsedTime", a, b), "cudaEventElapsedTime"))
        b.synchronize()
        return float(b.time_since(a))

    def capture(self, st: Any, launch: Any) -> Any:
        """Record what ``launch()`` enqueues on ``st`` into an executable CUDA graph (cuda-python only), or None
        when the capture failed: ``launch()`` returned False (TensorRT refused to enqueue under capture) or the
        capture was invalidated. As trtexec does (samples/common/sampleDevice.h ``TrtCudaGraph::
        endCaptureOnError``, called from sampleInference.cpp when enqueue fails under capture): end the capture,
        destroy a graph that came back anyway, clear the sticky error; the caller then runs without a graph
        ("--useCudaGraph ... may be ignored if the graph capture fails").

        ``cudaGraphInstantiateWithFlags(graph, 0)``: one signature in cuda-python 11.8, 12.x and 13.x
        (``cudaGraphInstantiate`` takes a log buffer in 11.8 and flags later)."""
        if self.cudart is None:
            raise GhostedgeError("--cuda-graph needs cuda-python (pycuda has no stream capture here)")
        rt = self.cudart
        self._ck(self._call("cudaStreamBeginCapture", st, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                 "cudaStreamBeginCapture")
        enqueued = launch()
        err, graph = self._call("cudaStreamEndCapture", st)
        if enqueued is False or int(err) != 0:
            if int(err) == 0 and graph is not None:
                self._call("cudaGraphDestroy", graph)   # a graph of a failed enqueue must never be replayed
            self._call("cudaGetLastError")              # the invalidated capture leaves a sticky error
            return None
        err, exe = self._call("cudaGraphInstantiateWithFlags", graph, 0)
        self._call("cudaGraphDestroy", graph)  # the executable graph keeps what it needs
        if int(err) != 0:
            self._call("cudaGetLastError")
            return None
        return exe

    def launch_graph(self, g: Any, st: Any) -> None:
        self._ck(self._call("cudaGraphLaunch", g, st), "cudaGraphLaunch")

    def destroy_graph(self, g: Any) -> None:
        if self.cudart is not None:
            self._call("cudaGraphExecDestroy", g)

    def destroy_stream(self, st: Any) -> None:
        if self.cudart is not None:
            self._call("cudaStreamDestroy", st)
        # a pycuda Stream is released with its Python object

    def destroy_event(self, ev: Any) -> None:
        if self.cudart is not None:
            self._call("cudaEventDestroy", ev)

    def device_info(self) -> dict:
        if self.cudart is not None:
            props = self._ck(self._call("cudaGetDeviceProperties", 0), "cudaGetDeviceProperties")
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            _, drv = self._call("cudaDriverGetVersion")
            _, rt = self._call("cudaRuntimeGetVersion")
            return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
                    "cuda_driver": _cuda_ver(drv), "cuda_runtime": _cuda_ver(rt)}
        d = self.pycuda.Device(0)
        cc = d.compute_capability()
        return {"gpu": d.name(), "compute_capability": f"{cc[0]}.{cc[1]}",
                "cuda_driver": _cuda_ver(self.pycuda.get_driver_version()), "cuda_runtime": None}


def _err_name(err: Any) -> str:
    name = getattr(err, "name", None)
    return f"{name} ({int(err)})" if name else f"CUDA error {int(err)}"


def _cuda_hint(err: Any) -> str:
    name = getattr(err, "name", "") or ""
    if "InsufficientDriver" in name:
        try:
            from importlib.metadata import version

            cp = version("cuda-python")
        except Exception:  # noqa: BLE001
            cp = "?"
        return (f"the driver is older than cuda-python {cp} needs (cuda-python 13.x needs a CUDA 13 driver, "
                "580 or newer): install the cuda-python of your driver's CUDA major, e.g. "
                "pip install 'cuda-python>=12,<13' for a CUDA 12 driver or JetPack 6")
    if "NoDevice" in name:
        return "no CUDA GPU is visible (check nvidia-smi, CUDA_VISIBLE_DEVICES)"
    return "check the GPU with nvidia-smi / tegrastats"


def _cuda_ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


#: the reasons ``cuda_probe`` gives when this machine simply has no GPU (a CPU fallback is right), as opposed
#: to a GPU that a broken driver or binding hides
NO_DEVICE = "no CUDA device was found"
NO_DRIVER = "no NVIDIA driver is loaded here"


class CudaAbsent(GhostedgeError):
    """No NVIDIA driver at all: the machine has no usable GPU, nothing is broken."""


def cuda_absent(why: str) -> bool:
    """Whether a ``cuda_probe`` reason means "no GPU here" (fall back to the CPU) rather than "CUDA is broken"."""
    return why.startswith((NO_DEVICE, NO_DRIVER))


@dataclass(frozen=True)
class CudaStatus:
    """What ``cuda_status`` found: the first device, or why there is none; ``absent``: this machine simply has no
    GPU (no device, no NVIDIA driver: a CPU fallback is right), as opposed to a GPU a broken driver or binding
    hides."""

    gpu: dict | None
    why: str = ""
    absent: bool = False


def cuda_status() -> CudaStatus:
    """The first CUDA device, or why not, told apart by the exception CUDA raised (never by its text)."""
    try:
        cu = Cuda()
        if cu.device_count() < 1:
            return CudaStatus(None, NO_DEVICE, absent=True)
        return CudaStatus(cu.device_info())
    except CudaAbsent as e:
        return CudaStatus(None, str(e), absent=True)
    except GhostedgeError as e:
        return CudaStatus(None, str(e))
    except (ImportError, OSError, RuntimeError) as e:
        return CudaStatus(None, f"CUDA is unusable here ({e})")


def cuda_probe() -> tuple[dict | None, str]:
    """(first CUDA device, "") or (None, why not): "no device" / "no driver" differ from a broken driver or
    binding (``cuda_absent`` tells which; ``cuda_status`` says so without reading the reason)."""
    st = cuda_status()
    return st.gpu, st.why
