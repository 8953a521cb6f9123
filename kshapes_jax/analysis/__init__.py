"""The papers' figures and tables as pure functions over kernels, positions and models.

One module per method, named as its conv kind: `acb` (ACNet), `active`
(ACU), `dcls`, `rotate` (RotateConv), `versatile`. `train.analyze` turns them into
PNGs and a markdown report for a trained run.
"""

from kshapes_jax.analysis import acb, active, dcls, rotate, versatile

__all__ = ["acb", "active", "dcls", "rotate", "versatile"]
