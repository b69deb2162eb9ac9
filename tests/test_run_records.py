"""scripts/run_records.py: time to accuracy from a run's epochs (and its evaluations inside them), and the
statistics over a preset's runs."""

import results_table
import run_records
from jaxmnist import host


def test_time_to_accuracy_counts_everything_before_the_epoch_that_reached_it():
    # 10 s of start-up and compilation, then three 30 s epochs; 99.0 % first after epoch 2, 99.5 % never.
    assert run_records.time_to(99.0, [98.5, 99.1, 99.3], [30.0, 30.0, 30.0], wall_s=100.0) == 70.0
    assert run_records.time_to(99.5, [98.5, 99.1, 99.3], [30.0, 30.0, 30.0], wall_s=100.0) is None
    assert run_records.time_to(98.0, [98.5], [30.0], wall_s=40.0) == 40.0
    # With evaluations inside the epochs (--evals-per-epoch 3: [accuracy, seconds into the epoch]), 99.0 % first
    # at 10.5 s into epoch 2, 99.2 % at its end, 99.3 % at epoch 3's end (its interim ones lower).
    interim = [[[97.0, 10.0], [98.0, 20.0]], [[99.05, 10.5], [98.95, 20.5]], [[99.1, 10.0], [99.2, 20.0]]]
    curve = [98.5, 99.2, 99.3]
    assert run_records.time_to(99.0, curve, [30.0] * 3, wall_s=100.0, interim=interim) == 10.0 + 30.0 + 10.5
    assert run_records.time_to(99.2, curve, [30.0] * 3, wall_s=100.0, interim=interim) == 70.0
    assert run_records.time_to(99.25, curve, [30.0] * 3, wall_s=100.0, interim=interim) == 100.0
    # With the start-up the run recorded (8 s to its first epoch), the run's finish after its last epoch (here
    # 100 - 8 - 90 = 2 s of reports) no longer counts.
    assert run_records.time_to(99.0, [98.5, 99.1, 99.3], [30.0] * 3, wall_s=100.0, startup_s=8.0) == 68.0
    assert run_records.time_to(99.0, curve, [30.0] * 3, wall_s=100.0, interim=interim, startup_s=8.0) == 48.5
    record = {"epochs": [{"epoch": 1, "test_acc": 98.0}, {"epoch": 2, "interim": [{"test_acc": 99.0, "at_s": 3.0}]}]}
    assert run_records.interim_evaluations(record) == [[], [[99.0, 3.0]]]
    assert run_records.interim_evaluations({"epochs": record["epochs"][:1]}) is None

    def run(seed, curve, wall):
        epoch_s = [30.0] * len(curve)
        return {
            "seed": seed,
            "final_acc": curve[-1],
            "best_acc": max(curve),
            "avg_epoch_s": 30.0,
            "device": "cpu:cpu",
            "versions": {},
            "commit": None,
            "wall_s": wall,
            "time_to": {str(t): run_records.time_to(t, curve, epoch_s, wall) for t in run_records.TARGETS},
        }

    agg = run_records.aggregate([run(0, [99.2, 99.6], 70.0), run(1, [98.9, 99.4], 72.0)])
    assert agg["wall_s"]["mean"] == 71.0
    assert agg["time_to"]["99.0"] == {"mean": 56.0, "std": agg["time_to"]["99.0"]["std"], "n": 2}  # 40 and 72
    assert agg["time_to"]["99.5"]["n"] == 1 and agg["time_to"]["99.5"]["mean"] == 70.0
    result = {"preset": "fast", "frameworks": {"jax": agg}}
    row = results_table.time_table([result], {}).splitlines()[2]
    assert row.startswith("| `fast` | jax | 2 | 99.50 ± 0.14 % | 71 ± 1 s | 56 ± 23 s (2/2) | 70 s (1/2) |"), row


def test_a_torch_run_with_workers_recorded_before_the_tree_was_counted_is_judged_by_the_load():
    """Before `others_cpu_scope`, others_cpu held torch's own DataLoader workers (0.14-0.22 of a quiet 16-core GPU
    machine): for such a run the load average decides; a run without workers, or one recorded since, keeps it."""
    epochs = [{"epoch": 1, "others_cpu": 0.2, "load": 4.5}, {"epoch": 2, "others_cpu": 0.01, "load": 17.0}]
    old = {"machine": "Intel Xeon, family 6 model 207, avx2, 16 cores", "epochs": epochs}
    assert run_records.loaded_epochs(old, num_workers=4) == [2]  # load 17 > 16 cores + 0.5
    assert run_records.loaded_epochs(old, num_workers=0) == [1]  # no workers: the figure was right
    assert run_records.loaded_epochs(old) == [1]
    new = {**old, "others_cpu_scope": host.OTHERS_CPU_SCOPE}
    assert run_records.loaded_epochs(new, num_workers=4) == [1]  # since: the workers are the run's own


def test_seeds_trained_together_read_their_processs_segments(tmp_path):
    """Seeds of one process log into LOGDIR/seed<k>/, the process's segments sit in LOGDIR: a resumed stack is
    counted as resumed (its wall time the first start-up plus every epoch), not guessed from the last process."""
    import json

    epochs = [{"epoch": k + 1, "test_acc": 99.0 + k / 10, "time_s": 10.0} for k in range(3)]
    record = {"final_acc": 99.2, "best_acc": 99.2, "best_epoch": 3, "avg_epoch_s": 10.0, "compile_s": 30.0,
              "device": "gpu:H200", "versions": {}, "commit": None, "startup_s": 40.0, "epochs": epochs}  # fmt: skip
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "metrics.json").write_text(json.dumps(record))
    segments = [{"wall_s": 55.0, "ended": "stopped"}, {"wall_s": 60.0, "ended": "finished"}]
    (tmp_path / run_records.SEGMENTS).write_text(json.dumps(segments))
    run = run_records.run_record(1, tmp_path / "seed1", 60.0, None, [0, 1], tmp_path)
    assert (run["segments"], run["wall_s"], run["trained_with"]) == (2, 70.0, [0, 1])
