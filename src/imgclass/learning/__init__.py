"""Learning with few or no labels: clustering (``cluster``), semi-supervised training
(``semi``), self-supervised pretraining (``pretrain``) and active learning (``active``).

This layer sits on top of ``models``, ``features`` and ``training``; the CLI commands that use it
live in ``imgclass.cli`` (one module per command group).
"""
