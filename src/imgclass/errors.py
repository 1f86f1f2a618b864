"""The error hierarchy. The CLI turns every ``ImgclassError`` into one line and exit code 2.

Messages follow one rule: say *what* went wrong, *where* (file or option) and *what to do*.
"""

from __future__ import annotations


class ImgclassError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class DataError(ImgclassError):
    """A dataset, folder, CSV or JSONL file cannot be read as asked."""


class ConfigError(ImgclassError):
    """An option, method spec or configuration value is invalid."""


class OutputError(ConfigError):
    """A file or folder cannot be written (read-only, disk full, or a run folder taken by another run)."""


class ModelFormatError(ImgclassError):
    """A model bundle is missing, damaged, too new or holds untrusted types."""


class ImageLoadError(ImgclassError):
    """One image could not be decoded. Runs skip such files, count them and list them."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across joblib workers despite the two-argument constructor
        return (type(self), (self.path, self.reason))


class DataWarning(UserWarning):
    """Something in the data was skipped or changed (rows without a usable label, duplicates); the CLI
    prints it as one ``warning:`` line."""
