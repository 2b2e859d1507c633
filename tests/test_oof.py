"""oof: fold outputs -> the predictions contract, refusing any fold whose model saw its rows.

The fold folders here are written by hand (probabilities that encode their row and fold), so the
assembly's row order and checks are tested without training; test_train.py assembles real ones.
"""

from __future__ import annotations
