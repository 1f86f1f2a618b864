"""Self-supervised pretraining pieces (SimCLR, BYOL, rotation, SCAN, self-labelling); ``learning.pretrain`` runs them."""

from ...transforms.augment import ViewAugment
from .config import METHODS, PretrainConfig
from .io import init_backbone, read_backbone_info, save_backbone
from .losses import byol_loss, mine_neighbors, nt_xent, scan_loss
from .trainer import SelfSupervisedTrainer

__all__ = ["METHODS", "PretrainConfig", "SelfSupervisedTrainer", "ViewAugment", "byol_loss", "init_backbone",
           "mine_neighbors", "nt_xent", "read_backbone_info", "save_backbone", "scan_loss"]
