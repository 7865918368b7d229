"""Ranks 0 and 2 of the sub-group checks (test_subgroups.py is rank 1, inside the pytest process).

    python subgroup_worker.py INIT_METHOD RANK

World of 3 gloo ranks; sub-group {1, 2}. Ranks 1 and 2 run `subgroup_sequence` on the sub-group
(rank 0 stays out of it), then all three run `world_sequence`. Every rank calls the same
collectives in the same order, which is what a sharded operator requires.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch.distributed as dist
from dist_helpers import subgroup_sequence, world_sequence

if __name__ == "__main__":
    init_method, rank = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=3, timeout=timedelta(seconds=60))
    try:
        sub = dist.new_group([1, 2])
        if rank in (1, 2):
            subgroup_sequence(sub)
        world_sequence(dist.group.WORLD)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Every collective is done. gloo's teardown can abort the process ("terminate called without an active
    # exception") when its threads race at exit on a loaded machine; nothing is left to check, so leave at once.
    sys.stdout.flush()
    os._exit(0)
