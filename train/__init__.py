"""The kshapes-jax training system: `python -m train.main --config configs/<experiment>.py --workdir
DIR`."""
