"""One process of the README's multi-process recipe (run by tests/test_multiprocess.py).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT MODE OUT.npz

MODE: ``chains`` / ``data`` (SGLD with ``shard=``) or ``federated`` (FSGLD on the paper's toy,
chains sharded). Process 0 writes the draws to OUT.npz.
"""

import sys

import jax

pid, nproc, port, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
# The recipe: gloo CPU collectives, then jax.distributed.initialize on every process, before
# anything else touches JAX; then the same program on every process.
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)

import os  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's heatbath, and test_federated
import heatbath as hb  # noqa: E402
from heatbath.drivers import batching  # noqa: E402
from test_federated import toy  # noqa: E402

target, shards, ids, _, q = toy(num_per=40)
kw = dict(batch_size=10, num_samples=50, num_chains=8, seed=1, progress_bar=False, checks="off")
if mode == "federated":
    r = hb.sample(target, hb.samplers.fsgld(5e-5, conducive=q), shard="chains",
                  batching=batching.federated(ids, local_steps=5, availability=0.2), **kw)
    extra = {"rounds_served": r.stats["rounds_served"]}
else:
    r = hb.sample(target, hb.samplers.sgld(5e-5), shard=mode, **kw)
    extra = {}
if pid == 0:
    np.savez(out, theta=r.samples["theta"], **extra)
print("done", pid, jax.process_count(), len(jax.devices()), flush=True)
