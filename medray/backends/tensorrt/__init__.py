"""TensorRT backend (``backend=trt``): engines built on the GPU nodes; see backend.py."""
