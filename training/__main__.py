"""``python -m training COMMAND …`` — the training commands without installed entry points."""

import sys

from training.cli import main

sys.exit(main())
