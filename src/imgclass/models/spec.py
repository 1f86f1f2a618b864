"""Method specs: the strings that name an estimator (``hog+svm``, ``hog,color_hist+logreg``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec. ``kind`` is ``"features"`` (FEATURES+CLASSIFIER) or ``"deep"``."""

    text: str
    kind: str
    features: tuple[str, ...] = ()
    classifier: str | None = None
    backbone: str | None = None


def parse_spec(text: str) -> MethodSpec:
    """Parse a method spec; raises ``ConfigError`` naming the bad part.

    >>> parse_spec("hog,color_hist+svm").features
    ('hog', 'color_hist')
    """
    from ..features.classical import EXTRACTORS
    from .classical import CLASSIFIERS

    t = (text or "").strip().lower()
    if not t:
        raise ConfigError("--method is empty; e.g. --method hog+svm (see 'imgclass methods')")
    if "+" in t:
        feats, _, clf = t.rpartition("+")
        names = tuple(f.strip() for f in feats.split(",") if f.strip())
        for n in names:
            if n not in EXTRACTORS:
                from ..features.deep import is_backbone_name

                if not is_backbone_name(n):
                    raise ConfigError(f"--method {text}: unknown features {n!r}; choose from "
                                      f"{', '.join(EXTRACTORS)}, lite0/lite1/lite2 or a timm backbone "
                                      "(see 'imgclass methods')")
        if clf not in CLASSIFIERS:
            raise ConfigError(f"--method {text}: unknown classifier {clf!r}; choose from "
                              f"{', '.join(CLASSIFIERS)} (see 'imgclass methods')")
        if not names:
            raise ConfigError(f"--method {text}: name features before '+', e.g. hog+{clf}")
        return MethodSpec(text=t, kind="features", features=names, classifier=clf)
    raise ConfigError(f"--method {text}: unknown method; classical specs look like FEATURES+CLASSIFIER "
                      "(e.g. hog+svm); see 'imgclass methods'")


def list_methods() -> list[tuple[str, str]]:
    """(spec, description) for every building block and the recommended combinations."""
    from ..features.classical import EXTRACTORS
    from .classical import CLASSIFIERS, RECOMMENDED

    rows = [(spec, desc) for spec, desc in RECOMMENDED]
    rows += [(f"{name}+CLASSIFIER", cls.description) for name, cls in EXTRACTORS.items()]
    rows += [(f"FEATURES+{name}", desc) for name, (_, desc) in CLASSIFIERS.items()]
    return rows


def split_methods(text: str) -> list[str]:
    """Split a ``--methods`` value into specs: ``hog,color_hist+svm,lbp+rf`` → 2 specs.

    Commas separate methods except inside a feature list: a comma-separated piece without ``+``
    belongs to the next method's features.
    """
    pieces = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    out, pending = [], []
    for p in pieces:
        if "+" in p:
            out.append(",".join(pending + [p]))
            pending = []
        else:
            pending.append(p)
    if pending:
        out.append(",".join(pending))  # let parse_spec report the incomplete spec
    return out
