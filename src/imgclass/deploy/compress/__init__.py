"""Compression of model bundles: magnitude pruning and knowledge distillation.

- ``prune``: zero the smallest weights of a deep bundle, fine-tune briefly with the training engine
  while the zeros are held by masks (``torch.nn.utils.prune``), make the masks permanent and save a
  normal bundle. *Unstructured* (default): one global L1 ranking over every convolution and linear
  weight, so layers lose what they can spare. *Structured*: per convolution, the output channels with
  the smallest L2 norm are zeroed whole. Either way the tensors keep their shapes: the saved file is
  as large as before and dense kernels run as fast as before; what shrinks is the compressed size
  (zeros compress) and the number of non-zero parameters. Removing zeroed channels for real needs a
  dependency graph of the network (torch-pruning), which is not a dependency.
- ``distill``: train a small student (``smallcnn``, ``mobilenetv3_small_100@scratch``, any deep spec)
  on the soft predictions of a teacher bundle (deep or classical). The teacher's probabilities are
  computed once, from the original images with the teacher's own pre-processing, so teacher and
  student may use different input sizes. Loss (Hinton et al. 2015)::

      alpha * T^2 * KL(p_teacher^T || softmax(z_student / T)) + (1 - alpha) * CE(z_student, label)

  where ``p_teacher^T = softmax(z_teacher / T)`` from the teacher's logits (deep) or
  ``softmax(log p_teacher / T)`` (classical). The soft targets are those of the un-augmented image
  (offline distillation), while the student sees the engine's augmented batches.

Both report size (bundle bytes, zlib-compressed bytes, non-zero parameters), speed (images/s of
``predict_proba`` on the validation images, decoding included, after a warm-up) and validation
metrics before and after, and with ``out`` write a run directory like ``imgclass train``:
``model/`` (the bundle), ``compress.json``, ``config.yaml``, ``split.json``, ``metrics.jsonl``,
``log.txt``.

Files: ``pruning`` and ``distillation`` (the two entry points), ``inputs`` (model and split),
``finetune`` (engine training and the refitted decision rule), ``measure`` (size, speed, metrics),
``rundir`` and ``result`` (the run directory and ``compress.json``).
"""

from .distillation import DistillLoss, distill, teacher_logits
from .pruning import prune
from .result import COMPRESS_JSON, CompressResult

__all__ = ["COMPRESS_JSON", "CompressResult", "DistillLoss", "distill", "prune", "teacher_logits"]
