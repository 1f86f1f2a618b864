"""Data curation: image quality, exact and near duplicates (and leakage across splits), outliers and
likely label errors. Depends on features and evaluation; never modifies the user's files."""

from .curate import curate, read_oof
from .result import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, ISSUE_TYPES, CurationResult

__all__ = ["DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "ISSUE_TYPES", "CurationResult", "curate", "read_oof"]
