"""Deep learning from scratch: a two-layer NumPy network with hand-written backpropagation,
gradient-checked against PyTorch autograd (tests/test_scratch.py)."""

from .numpy_net import TwoLayerNet, digits_demo, sigmoid, softmax

__all__ = ["TwoLayerNet", "digits_demo", "sigmoid", "softmax"]
