"""Fine-tune ImageNet backbones on an image-folder dataset and compare them (see README)."""

import os
import sys

# TensorFlow's C++ start-up notices drown the pipeline's own logs; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras progress bars redraw in a terminal; in a log file (CI, nohup) they would write one
# line per step, so there Keras prints one line per epoch instead.
PROGRESS = "auto" if sys.stdout.isatty() else 2
