"""python -m train.reproduce: the reproduction suite's driver (train/reproduce/driver.py)."""

from train.reproduce import driver

if __name__ == "__main__":
  __doc__ = driver.__doc__  # what --help shows
  driver.run()
