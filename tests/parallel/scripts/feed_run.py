"""Dummy chains of tasks fed while the queue runs (scheduler ``feed``/``exclusive``), for the tests.

usage: python feed_run.py OUTDIR [--master-works]
Three chains: an exclusive step, then 6 parallel tasks, then an exclusive step.  A step's tasks
are fed when the step before has all its results.  Rank 0 writes OUTDIR/summary.json: which rank
ran each task, in the order the results arrived.
"""

import argparse
import json
import os
import time

from tract7dt_mpi.parallel import get_comm
from tract7dt_mpi.parallel.scheduler import Task, run_tasks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--master-works", action="store_true")
    a = ap.parse_args()
    comm = get_comm(1)
    ready, left, ran = [], {}, []

    def step(chain, k):
        if k == 0 or k == 2:
            tasks = [Task(f"c{chain}/s{k}", f"step{k}", cost=1.0, payload=(chain, k), exclusive=True)]
        else:
            tasks = [Task(f"c{chain}/s1/{i}", "cell", cost=1.0 + i, index=i, payload=(chain, k))
                     for i in range(6)]
        left[(chain, k)] = len(tasks)
        ready.extend(tasks)

    def on_done(task, res, info):
        ran.append([task.id, info.rank, task.exclusive])
        chain, k = task.payload
        left[(chain, k)] -= 1
        if left[(chain, k)] == 0 and k < 2:
            step(chain, k + 1)

    def feed():
        new = list(ready)
        ready.clear()
        return new

    def fn(task):
        time.sleep(0.3 if task.exclusive else 0.05)
        return None

    if comm.is_master:
        for c in range(3):
            step(c, 0)
    rep = run_tasks(comm, feed() if comm.is_master else None, fn, on_done=on_done, feed=feed,
                    master_works=a.master_works, heartbeat_sec=0)
    if comm.is_master:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "summary.json"), "w") as fh:
            json.dump({"ran": ran, "total": rep.total, "done": rep.done}, fh)


if __name__ == "__main__":
    main()
