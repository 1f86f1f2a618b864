"""Data curation: image quality, exact and near duplicates (and leakage across splits), outliers and
likely label errors. Depends on features and evaluation; never modifies the user's files."""

from .curate import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, ISSUE_TYPES, CurationResult, curate, read_oof

__all__ = ["DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "ISSUE_TYPES", "CurationResult", "curate", "read_oof"]
