"""The modes settings choose between, as str Enums (their values are what users type and what records
store). Kept apart from the stages that use them, with no heavy imports, so the command line can offer
them as choices without loading PyTorch or ONNX."""

from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    """How an activation's range is computed from its calibration statistics (calibrate.compute_amax)."""
    entropy = "entropy"          # TensorRT's: the clip with the least KL divergence of the histogram
    minmax = "minmax"            # the largest |value| seen
    percentile = "percentile"    # that percentile of |value|
    mse = "mse"                  # the clip with the least expected squared error (best measured)


class Ranges(str, Enum):
    """How each activation's range is chosen."""
    auto = "auto"        # per tensor, the method with the least Fisher-weighted error
    fixed = "fixed"      # the calibration method's, for every tensor


class Rounding(str, Enum):
    """How weights are rounded to their grid."""
    gptq = "gptq"        # error-compensating, on the calibration images
    nearest = "nearest"


class Baseline(str, Enum):
    """What bench compares engines with."""
    torch = "torch"      # the FP32 PyTorch model: timed, and the reference for drift
    none = "none"


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"          # momentum, Nesterov


class Schedule(str, Enum):
    """The learning-rate schedule after warmup."""
    cosine = "cosine"
    step = "step"
    constant = "constant"


class InputDtype(str, Enum):
    """What an engine's input takes (build --input)."""
    float32 = "float32"  # the normalised float tensor, as exported
    uint8 = "uint8"      # RGB pixels 0-255; the engine converts and normalises them itself


class InputLayout(str, Enum):
    """The axis order of a uint8 input (build --input-layout)."""
    nchw = "nchw"
    nhwc = "nhwc"        # camera frames as they come
