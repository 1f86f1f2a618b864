"""imgclass: from a folder of images to a trained, evaluated, explained and served image classifier.

The public API is imported lazily so ``import imgclass`` (and the CLI's ``--help``) stay instant.

>>> import imgclass                                            # doctest: +SKIP
>>> ds = imgclass.load_dataset("photos/")                       # doctest: +SKIP
>>> train, val = ds.split(val=0.2, seed=0)                      # doctest: +SKIP
>>> model = imgclass.train(train, method="hog+svm", val=val)    # doctest: +SKIP
>>> model.predict(["cat.jpg"], top_k=3)[0].label                # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load_dataset": "imgclass.data",
    "load_image": "imgclass.data",
    "ImageDataset": "imgclass.data",
    "train": "imgclass.api",
    "evaluate": "imgclass.api",
    "predict": "imgclass.api",
    "predict_proba": "imgclass.api",
    "compare": "imgclass.api",
    "cv": "imgclass.api",
    "robustness": "imgclass.api",
    "explain": "imgclass.api",
    "cluster": "imgclass.learning.cluster",
    "ClusterResult": "imgclass.learning.cluster",
    "load_model": "imgclass.models",
    "FeaturePipeline": "imgclass.models",
    "Preprocess": "imgclass.transforms",
    "ImgclassError": "imgclass.errors",
    "DataError": "imgclass.errors",
    "ConfigError": "imgclass.errors",
    "ModelFormatError": "imgclass.errors",
    "ImageLoadError": "imgclass.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgclass' has no attribute {name!r}")


def __dir__():
    return __all__
