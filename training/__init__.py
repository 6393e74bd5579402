"""PSCL training for wsi-seg (thesis ch. 4–5): datasets, losses, pre-training, stages 1 and 2, metrics.

Modules follow the data flow: ``datasets`` → ``augment`` → ``losses`` / ``cams`` →
(``pretrain``) → ``stage1`` → ``pseudo_labels`` → ``stage2`` → ``metrics`` / ``evaluate``,
the loops sharing ``loop``; ``cli`` wraps them as ``wsi-seg train | pretrain |
pseudo-labels | evaluate``. Importing this package imports nothing heavy.
"""
