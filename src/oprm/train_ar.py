"""``python -m oprm.train_ar``: the shipped model's training command, kept at this path because the model's
training_meta.json records it; the code lives in :mod:`oprm.training`."""
import sys

from .training.train import main

if __name__ == "__main__":
    sys.exit(main())
