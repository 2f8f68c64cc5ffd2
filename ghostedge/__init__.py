"""ghostedge: GhostNet from PyTorch to INT8-quantized TensorRT engines, with drift and speed measured."""

__version__ = "0.1.0"
