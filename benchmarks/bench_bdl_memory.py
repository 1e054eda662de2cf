"""python benchmarks/bench_bdl_memory.py 400: peak RSS of keeping every draw of the 670k-weight MLP: baseline (a 1-draw run, everything
compiled) vs a run keeping N draws. ``python benchmarks/bench_bdl_memory.py 1000 moments``: the same with keep="moments"
(the baseline a 1-draw moments run; "kept" is then the moments' size, not the draws')."""
import resource, sys, os, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bdl as B, heatbath as hb, jax, numpy as np
n = int(sys.argv[1])
moments = len(sys.argv) > 2 and sys.argv[2] == "moments"
data, params = B.make_problem(B.FULL["sizes"], B.FULL["rows"])
t = hb.models.from_logdensity(B.logprior, B.loglik, data, params=params)
def run(k):
    return hb.sample(t, hb.samplers.sgld(1e-6), batch_size=128, num_samples=k, checks="off", progress_bar=False, init=params, seed=0,
                     num_warmup=0, keep="moments" if moments else "draws")
r = run(1); del r
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
r = run(n)
kept = (sum(np.asarray(v).nbytes for v in jax.tree.leaves((r.moments["mean"], r.moments["var"]))) if moments
        else sum(v.nbytes for v in r.samples.values())) / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"draws": n, "keep": "moments" if moments else "draws", "baseline_MiB": base, "kept_MiB": kept,
                  "peak_MiB": peak, "ratio": peak / (base + kept)}))
