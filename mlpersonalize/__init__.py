"""mlpersonalize: personalize an image classifier on your own machine with ONNX Runtime training."""

__version__ = "0.1.0"
