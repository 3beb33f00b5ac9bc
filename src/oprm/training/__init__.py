"""The shipped model (``src/oprm/models/oprm-ar-mamba2``): how it is trained and measured.

* ``chat``: its chat markup and the prompt ids [P] / [S] exactly as the engine builds them
* ``model``: its tokenizer and Mamba2, built or grown, and saved
* ``data``: the training examples (``--data docs`` and ``--data oprm`` mixes), batched
* ``heldout``: teacher-forced held-out checks shared by training and measurement
* ``train``: the training loop and the ``oprm train-ar`` entry point
* ``recipe``: the shipped multi-stage recipe and what was tried on the way (the card's notes)
* ``chunk_stats``: per-chunk scans and a replay of selection rules (the card's variants, the selection study)
* ``measure``: the measurement (``python -m oprm.training.measure``); ``card``: the model card it writes

The AR task itself (episodes, documents of a given token length) lives in :mod:`oprm.synthetic`.
"""
