"""The pyDVL side of ``bench_values.py``: run in an environment with pyDVL (it pins numpy < 2,
so it lives in its own venv). Reads a tabulated game (``table[bitmask]`` = U(S), .npy), runs
pyDVL's MSR-Banzhaf and TMC-Shapley with their defaults (RelativeTruncation for TMC) on it,
single process, counting every utility call, and prints JSON.

    /path/to/pydvl-venv/bin/python benchmarks/pydvl_game.py TABLE.npy --samples 2000 --seed 0
"""

import argparse
import json

import numpy as np
from joblib import parallel_config
from pydvl.valuation import (
    Dataset,
    MaxUpdates,
    MSRBanzhafValuation,
    TMCShapleyValuation,
)
from pydvl.valuation.utility.base import UtilityBase


class TableUtility(UtilityBase):
    """U(S) looked up in the table; every call counted (copies share the counter)."""

    def __init__(self, table, counter):
        self.table, self.counter = table, counter

    def __call__(self, sample):
        self.counter[0] += 1
        if sample is None or len(sample.subset) == 0:
            return float(self.table[0])
        return float(self.table[int(np.sum(1 << np.asarray(sample.subset, np.int64)))])

    def with_dataset(self, data, copy=True):
        u = TableUtility(self.table, self.counter) if copy else self
        u._training_data = data
        return u


def run(table, method, budget, seed):
    n = int(np.log2(table.size))
    data = Dataset(np.arange(n).reshape(-1, 1).astype(float), np.zeros(n))
    counter = [0]
    u = TableUtility(table, counter)
    if method == "msr_banzhaf":
        v = MSRBanzhafValuation(u, is_done=MaxUpdates(budget), seed=seed, progress=False)
    else:
        v = TMCShapleyValuation(u, is_done=MaxUpdates(budget), seed=seed, progress=False)
    with parallel_config(n_jobs=1):
        v.fit(data)
    r = v.result if hasattr(v, "result") else v.values()
    order = np.argsort(r.indices)
    return {"values": np.asarray(r.values)[order].tolist(),
            "stderr": np.asarray(r.stderr)[order].tolist(),
            "evaluations": counter[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--samples", type=int, default=2000, help="MSR: value updates per player")
    ap.add_argument("--updates", type=int, default=200, help="TMC: value updates per player")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = np.load(a.table)
    import pydvl

    print(json.dumps({"pydvl": pydvl.__version__,
                      "msr_banzhaf": run(t, "msr_banzhaf", a.samples, a.seed),
                      "tmc_shapley": run(t, "tmc_shapley", a.updates, a.seed)}))


if __name__ == "__main__":
    main()
