"""The papers' figures and tables as pure functions over kernels, positions and models.

`train.analyze` turns them into PNGs and a markdown report for a trained run.
"""

from kshapes_jax.analysis import acnet, active, rotate, versatile

__all__ = ["acnet", "active", "rotate", "versatile"]
