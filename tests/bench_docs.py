"""A benchmark document for the tests of scripts/benchlib's plan and report (apart from helpers.py, so that the
library's tests never import the benchmark scripts)."""

from benchlib import environment, plan
from benchlib.settings import Settings


def bench_doc(results, platform="gpu"):
    """A benchmark document (`new_doc` of scripts/benchlib/plan.py) of an H100 run holding `results`."""
    settings = Settings(batch_sizes=(512, 64), num_workers=4, pin_memory=True)
    env = {
        "platform": platform,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "versions": {"jax": "x", "flax": "y"},
        "commit": "abc",
        "torch": {"version": "t", "device": "cuda"},
        "load_avg_start": (0.1, 0.1, 0.1),
        "nvidia_smi": {"gpus": [{"driver_version": "999.1"}]},
    }
    doc = plan.new_doc(settings, env, environment.device_peak(platform, env["device_kind"]))
    doc["results"] = results
    return doc
