"""``python -m wsi_seg_training COMMAND …`` — the training commands without installed entry points."""

import sys

from wsi_seg_training.cli import main

sys.exit(main())
