"""ONNX in one place: the exporter of torch modules, the graph rewrites and the one session factory.

Low in the stack so that ``features``, ``models``, ``training`` and ``deploy`` share them; torch, onnx
and onnxruntime are imported only when a function needs them.
"""

from .export import cache_dir, export_onnx, preprocessed
from .rewrite import feed_uint8_input, fold_static_pads
from .session import ort_threads, session

__all__ = ["cache_dir", "export_onnx", "feed_uint8_input", "fold_static_pads", "ort_threads", "preprocessed",
           "session"]
