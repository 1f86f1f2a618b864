"""Deploy: ONNX export with pre-processing and labels inside, quantisation, and the ONNX Runtime model."""

from .export import ONNX_FILE, QUANTIZE, export, read_metadata
from .runtime import OnnxModel

__all__ = ["ONNX_FILE", "QUANTIZE", "OnnxModel", "export", "read_metadata"]
