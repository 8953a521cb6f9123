"""The reproduction suite: the papers' small tables on real data, over seeds (REPRODUCTION.md).

What each row trains is configs/repro_fmnist.py; the rest is here:

  rows      Row: each row's paper number, baseline and analyses
  layout    ROOT/eN/ROW/seedS: where the runs and their records are
  ledger    each run's record, committed (results/runs)
  suite     Suite: the runs, on this machine or in the ledger, read through the rows
  report    results/REPRODUCTION.md
  driver    trains the pending runs, K at once (python -m train.reproduce)
"""
