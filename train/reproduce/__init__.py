"""The reproduction suite: the papers' small tables on real data, over seeds (results/REPRODUCTION.md).

rows      Row: each row's paper number, baseline and analyses (configs/repro_fmnist.py: what it trains)
layout    ROOT/eN/ROW/seedS: where the runs and their records are
ledger    each run's record, committed (results/runs)
suite     Suite: the runs, on this machine or in the ledger, read through the rows
report    results/REPRODUCTION.md
driver    trains the pending runs, K at once (python -m train.reproduce)
"""
