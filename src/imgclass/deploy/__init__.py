"""Deploy: ONNX export with pre-processing and labels inside, quantisation, the ONNX Runtime model, and
compression (pruning, distillation)."""

from .compress import COMPRESS_JSON, CompressResult, distill, prune
from .export import ONNX_FILE, QUANTIZE, export, read_metadata
from .runtime import OnnxModel

__all__ = ["COMPRESS_JSON", "ONNX_FILE", "QUANTIZE", "CompressResult", "OnnxModel", "distill", "export", "prune",
           "read_metadata"]
