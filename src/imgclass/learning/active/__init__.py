"""Active learning: which unlabelled images to label next, and a simulation that measures whether a
strategy beats labelling at random.

``suggest`` trains a ``FEATURES+CLASSIFIER`` method (default ``lite0+logreg``: frozen EfficientNet-Lite0
embeddings, cached on disk, + logistic regression) on the labelled set, scores every image of a pool
and returns the ``budget`` most useful ones, most useful first. ``simulate`` replays that loop on a
labelled dataset whose training labels are hidden: it starts from a small initial set, picks
``per_round`` images per round, reveals their labels, retrains and scores the validation split, for
each strategy and seed. Features are extracted once; every round only refits the classifier.

Strategies (the score is "higher = more useful"):

* ``entropy`` — Shannon entropy of the predicted class probabilities.
* ``margin`` — one minus the gap between the two most probable classes.
* ``least-confidence`` — one minus the highest probability.
* ``coreset`` — greedy k-center (Sener & Savarese 2018) on standardised features: repeatedly take the
  pool image farthest from everything labelled or already picked; the score is that distance.
* ``margin-kmeans`` — margin with a diversity filter ("diverse mini-batch", Zhdanov 2019): the
  ``10 x budget`` smallest-margin images are clustered into ``budget`` groups by k-means weighted by
  their uncertainty, and the most uncertain image of each group is taken. Plain uncertainty sampling
  fills a batch with near-duplicates from the same confusion; spreading the batch over clusters is the
  usual remedy.
* ``random`` — a seeded random order (no score): the baseline every other strategy must beat.

>>> from imgclass.learning.active import suggest, simulate      # doctest: +SKIP
>>> rows = suggest("labelled/", "unlabelled/", budget=50, strategy="margin", out="next")  # doctest: +SKIP
>>> rows[0]["path"], rows[0]["predicted"]                        # doctest: +SKIP
>>> res = simulate("cifar10-12k/", strategies="margin,entropy,random", rounds=8, per_round=50)  # doctest: +SKIP
>>> res.accuracy_at(500, "margin") - res.accuracy_at(500, "random")  # doctest: +SKIP

Files: ``strategies`` (the scores and the pick), ``inputs`` (checks shared by both entry points),
``query`` + ``suggestions`` (``suggest`` and its table), ``loop`` + ``curves`` (``simulate`` and its curves).
"""

from .curves import SimulationResult
from .loop import INITS, simulate
from .query import suggest
from .strategies import (
           STRATEGIES,
           UNCERTAINTY,
           check_strategy,
           diverse_margin,
           kcenter_greedy,
           select,
           uncertainty,
)
from .suggestions import Suggestions

__all__ = ["INITS", "STRATEGIES", "UNCERTAINTY", "SimulationResult", "Suggestions", "check_strategy",
           "diverse_margin", "kcenter_greedy", "select", "simulate", "suggest", "uncertainty"]
