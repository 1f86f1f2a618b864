"""Hyper-parameter search with Optuna (``imgclass tune``).

Every trial trains the method on the same seeded stratified split of the data and scores it on the
validation part with the task's headline metric (``accuracy``; ``micro_f1`` for multi-label data; any
other key of ``imgclass.tasks.HEADLINE`` with ``metric``). **Trial 0 is the method's default
parameters**, so the study always holds the baseline and the best value is never below it.

Optuna does the searching (nothing here re-implements it): TPE sampling seeded with ``seed``, median
pruning of deep trials from the validation score reported after every epoch, and an SQLite study in
``OUT/study.db``. A search that was killed continues when started again with the same ``OUT``: the
trials already COMPLETE or PRUNED are counted and only the ones missing to reach ``trials`` run (a
trial that was running when the process died is marked FAIL; failed trials do not count). One process
per study: two searches writing the same ``study.db`` at once are not supported.

Search space (parameters not listed keep the method's default; deep options given by the user,
e.g. ``epochs`` or ``optimizer``, are fixed and not tuned):

=============  ====================  =====================================================
family         parameter             range
=============  ====================  =====================================================
svm            C                     log-uniform 1e-2 .. 1e3
svm            gamma                 log-uniform 1e-5 .. 1e-1 (features are standardised)
linsvm         C                     log-uniform 1e-4 .. 10
logreg         C                     log-uniform 1e-4 .. 100
rf             n_estimators          integer, log-uniform 50 .. 500
rf             max_depth             one of None, 8, 16, 32
rf             min_samples_leaf      integer 1 .. 8
rf             max_features          one of sqrt, log2
knn            n_neighbors           integer, log-uniform 1 .. 50
knn            weights               one of uniform, distance
knn            p                     one of 1 (Manhattan), 2 (Euclidean)
tree           max_depth             one of None, 4, 8, 16, 32
tree           min_samples_leaf      integer 1 .. 20
mlp            alpha                 log-uniform 1e-6 .. 0.1
mlp            learning_rate_init    log-uniform 1e-4 .. 1e-2
hog features   hog.pixels_per_cell   one of 8, 16 (on the 64 px image)
hog features   hog.orientations      one of 6, 9, 12
pixels         pixels.size           one of 8, 16, 24
lbp features   lbp.grid              one of 1, 2, 3, 4
deep           lr                    log-uniform 1e-4 .. 1e-2 (SGD: 1e-3 .. 0.3)
deep           weight_decay          log-uniform 1e-5 .. 0.1
deep           label_smoothing       uniform 0 .. 0.2
deep           mixup                 uniform 0 .. 0.4 (alpha; 0 = off)
deep           dropout               uniform 0 .. 0.5
deep           batch_size            one of 32, 64, 128
=============  ====================  =====================================================

Feature parameters are searched only with ``tune_features`` (the default); extracted features are
cached per feature setting, so classifier-only trials cost one classifier fit each. Task options
(thresholds, ``balance``, ``hierarchy``) keep their defaults.

Files in ``OUT`` (default ``runs/<data>-<method>-tune``): ``study.db`` (the Optuna study),
``split.json``, ``best.json`` (method, params, value, metric, default_value, trials; written
atomically after every trial), ``trials.csv`` and ``optimization.png``. ``imgclass train DATA
--params OUT/best.json`` trains with the best parameters (``imgclass.api.train(params=...)``).

Files: ``space`` (the table above), ``params`` (``best.json`` back into ``train``), ``objective`` (what
one trial runs), ``study`` (the Optuna study and ``tune``), ``result`` (``TuneResult`` and the files).
"""

from .params import read_best, resolve_params, route_params
from .result import TuneResult
from .space import CLASSIFIER_SPACE, DEEP_SPACE, FEATURE_SPACE, Param, search_space, space_table
from .study import tune

__all__ = ["CLASSIFIER_SPACE", "DEEP_SPACE", "FEATURE_SPACE", "Param", "TuneResult", "read_best", "resolve_params",
           "route_params", "search_space", "space_table", "tune"]
