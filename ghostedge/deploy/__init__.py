"""From engine to application: the configuration files the two NVIDIA runtimes need.

``engine.py`` reads what an engine is (kind, model card, real input/output tensors, precision, batch
profile) from the files ghostedge wrote; ``deepstream.py`` writes a Gst-nvinfer config for DeepStream video
pipelines; ``triton.py`` writes a Triton Inference Server model repository. Each writes a whole folder
atomically (a temporary folder beside it, renamed into place).
"""
