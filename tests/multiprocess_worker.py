"""One process of the README's multi-process recipe (run by tests/test_multiprocess.py).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT MODE OUT.npz

MODE: ``chains`` / ``data`` (SGLD with ``shard=``), ``federated`` (FSGLD on the paper's toy,
chains sharded), ``federated-data`` (the same, the shards placed whole on the devices), or a
checkpointed ``federated-data`` run in the directory OUT.ckpt: ``ckpt-stop`` (every process
exits with status 3 right after the second commit, as if the job were killed) and then
``ckpt-resume`` (resumes it). Process 0 writes the draws to OUT.npz.
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
if mode == "ckpt-stop":
    from heatbath.drivers.checkpoint import Checkpoint

    commit = Checkpoint.commit

    def commit_then_die(self, segments_done, *args, **kwargs):
        meta = commit(self, segments_done, *args, **kwargs)
        if segments_done == 2:
            print("killed after commit 2", pid, flush=True)
            os._exit(3)
        return meta

    Checkpoint.commit = commit_then_die
if mode == "federated":
    r = hb.sample(target, hb.samplers.fsgld(5e-5, conducive=q), shard="chains",
                  batching=batching.federated(ids, local_steps=5, availability=0.2), **kw, num_warmup=0)
    extra = {"rounds_served": r.stats["rounds_served"]}
elif mode in ("federated-data", "ckpt-stop", "ckpt-resume"):
    ckpt = {"ckpt-stop": {"checkpoint": out + ".ckpt"}, "ckpt-resume": {"resume": out + ".ckpt"}}.get(mode, {})
    r = hb.sample(target, hb.samplers.fsgld(5e-5, conducive=q), shard="data", chunk_size=10,
                  batching=batching.federated(ids, local_steps=5, availability=0.2), **ckpt, **kw, num_warmup=0)
    extra = {"rounds_served": r.stats["rounds_served"]}
else:
    r = hb.sample(target, hb.samplers.sgld(5e-5), shard=mode, **kw, num_warmup=0)
    extra = {}
if pid == 0:
    np.savez(out, theta=r.samples["theta"], **extra)
print("done", pid, jax.process_count(), len(jax.devices()), flush=True)
