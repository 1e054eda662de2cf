"""benchmarks/gpu.py --smoke: the accelerator benchmark runs end to end on tiny sizes (any
backend, seconds) and writes one JSON file with every section's figures."""

import json
import math
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))


def _smoke(tmp_path, sections):
    import gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--smoke", "--out", str(out), "--sections", ",".join(sections)])
    res = json.loads(out.read_text())
    assert res["smoke"] is True and set(res["sections"]) == set(sections)
    for name, sec in res["sections"].items():
        assert "error" not in sec, (name, sec)
    return res


def test_gpu_benchmark_smoke_bdl(tmp_path):
    """The default suite: the MLP section (the optax floor and hb.sample SGHMC, tiny MLP)."""
    bdl = _smoke(tmp_path, ["bdl"])["sections"]["bdl"]
    assert bdl["weights"] == 8 * 4 + 4 + 4 * 3 + 3
    ratios = {k: v["median_ratio_to_optax"] for k, v in bdl["ratios"].items()}
    assert set(ratios) == {"optax", "hb SGHMC fused rademacher"}
    assert ratios["optax"] == 1.0 and all(math.isfinite(r) and r > 0 for r in ratios.values())


@pytest.mark.slow
def test_gpu_benchmark_smoke_all_sections(tmp_path):
    res = _smoke(tmp_path, ["bdl", "logistic", "fbgvi"])
    assert set(res["sections"]["logistic"]["ratios_to_floor"]) == {"floor", "blackjax sgld", "hb SGLD"}
    assert res["sections"]["fbgvi"]["seconds_per_step_min"] > 0
    assert "backend" in res["machine"]


def test_gpu_run_script_parses():
    """benchmarks/gpu.sh (the one GPU command) is valid bash."""
    import subprocess

    script = os.path.join(os.path.dirname(HERE), "benchmarks", "gpu.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0


@pytest.mark.slow
def test_gpu_profile_smoke(tmp_path):
    """benchmarks/gpu_profile.py --smoke: both models timed, a trace read back per model."""
    import gpu_profile

    res = gpu_profile.main(["--smoke", "--out", str(tmp_path)])
    for model in ("logistic", "mlp"):
        assert all(math.isfinite(v) and v > 0 for v in res[model]["min_ms_per_step"].values())
        trace = res[model]["trace"]
        assert "error" not in trace, trace
        assert trace["modules"]["jit_chunk"]["kernels_per_step"] > 0
    assert json.loads((tmp_path / "profile.json").read_text())["mlp"]["steps"] == 10
