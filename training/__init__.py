"""PSCL training for wsi-seg (thesis ch. 4–5): datasets, losses, stage 1, pseudo-labels, metrics.

Modules follow the data flow: ``datasets`` → ``augment`` → ``losses`` / ``cams`` →
``stage1`` → ``pseudo_labels`` → ``metrics`` / ``evaluate``; ``cli`` wraps them as
``wsi-seg train | pseudo-labels | evaluate``. Importing this package imports nothing heavy.
"""
