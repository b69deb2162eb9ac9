"""The markdown of a benchmark run: what ran where, the train-step table, the epoch and evaluation table, notes
(peaks, failures); and the table of a per-op profile."""

from __future__ import annotations

from collections import Counter

from benchlib.plan import find
from benchlib.settings import NETWORKS


def ratio_text(jax_ms: float | None, torch_ms: float | None) -> str:
    """Plain words: which framework is faster, by how much (per step)."""
    if not jax_ms or not torch_ms:
        return "-"
    r = torch_ms / jax_ms
    return f"JAX {r:.2f}x faster" if r >= 1 else f"torch {1 / r:.2f}x faster"


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _cell(rec: dict | None, key: str, spec: str = ".2f") -> str:
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return rec["status"]
    return _fmt(rec.get(key), spec)


def _ok(rec: dict | None) -> dict | None:
    return rec if rec is not None and rec["status"] == "ok" else None


def _header(doc: dict) -> list[str]:
    env, settings = doc["env"], doc["settings"]
    torch_env = env.get("torch") or {}
    gpus = (env.get("nvidia_smi") or {}).get("gpus") or []
    driver = f" (driver {gpus[0].get('driver_version')})" if gpus else ""
    load = lambda xs: ", ".join(f"{x:.2f}" for x in xs or ())  # noqa: E731
    state = "finished" if doc.get("finished") else "PARTIAL (interrupted, or cut by the budget)"
    tunables = env.get("env_vars", {}).get("GLIBC_TUNABLES")  # huge pages (jaxmnist/hugepages.py), where set
    # Measurements kept from earlier runs (bench.py --resume), by run.
    sessions = (r["session"] for r in doc.get("results", []) if "session" in r)
    earlier = Counter((session["created"], session["commit"]) for session in sessions)
    kept = [f"{n} measurement(s) from the run of {when} (commit {commit})" for (when, commit), n in earlier.items()]
    return [
        f"device: {env['platform']}:{env['device_kind']}{driver}; jax {env['versions'].get('jax')}, "
        f"flax {env['versions'].get('flax')}, torch {torch_env.get('version', '-')} on {torch_env.get('device', '-')}"
        f" ({torch_env.get('threads', '-')} threads); commit {env.get('commit')}"
        f"{' (dirty)' if env.get('dirty') else ''}{f'; GLIBC_TUNABLES={tunables} (both frameworks)' if tunables else ''}"
        f"{'; malloc keeps freed memory (both frameworks)' if env.get('malloc') == 'keep' else ''}",
        f"{'QUICK SMOKE RUN, NOT A BENCHMARK; ' if settings.get('quick') else ''}{state} after "
        f"{doc.get('elapsed_s', 0):.0f} s; load average at start {load(env.get('load_avg_start'))}, "
        f"at end {load(doc.get('load_avg_end'))}",
        f"JAX default matmul precision: {env.get('jax_default_matmul_precision') or 'default'}; torch TF32: "
        f"convs {torch_env.get('cudnn_allow_tf32', '-')}, matmuls {torch_env.get('cuda_matmul_allow_tf32', '-')}; "
        f"blog DataLoader: num_workers={settings['num_workers']}, pin_memory={settings['pin_memory']}",
    ] + ([f"kept (--resume: the same device, versions, driver, precision settings, environment variables and "
           f"settings): {'; '.join(kept)}"] if kept else [])


def _tuned_torch_ms(doc: dict, net: str, bs: int) -> float | None:
    """The fastest tuned torch step (eager or compiled), in ms, or None where neither ran."""
    tuned = [r["step_ms"] for r in (find(doc, k, net, bs) for k in ("torch_tuned", "torch_tuned_compiled")) if r]
    return min(tuned) if tuned else None


def _step_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    lines = [
        "Train step: median of device-synced steps on real MNIST batches, in ms. blog = the blog's DataLoader "
        "loop; tuned = device-resident data, channels_last, cudnn.benchmark, fused optimiser; compiled = tuned "
        "+ torch.compile. Ratios compare JAX with the blog loop and with the fastest tuned torch.",
        "",
        "| network | batch | MFLOP/img | JAX compile s | JAX ms | JAX img/s | JAX bf16 ms | torch blog ms | "
        "torch tuned ms | torch compiled ms | JAX vs blog | JAX vs tuned | JAX TFLOP/s (% of peak) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for net, bs in keys:
        j, jb, tb, te, tc = (
            find(doc, k, net, bs, ok=False)
            for k in ("jax_step", "jax_step_bf16", "torch_blog_step", "torch_tuned", "torch_tuned_compiled")
        )
        if j is None and tb is None and te is None:
            continue
        jms = _ok(j)["step_ms"] if _ok(j) else None
        compiled = _cell(tc, "step_ms")
        if _ok(tc) and tc.get("compile_error"):
            compiled = "failed (see notes)"
        util = "-"
        if _ok(j) and j.get("achieved_tflops") is not None:
            frac = j.get("fraction_of_peak")
            util = f"{j['achieved_tflops']:.3f}" + (f" ({100 * frac:.2f} % {j['peak_kind']})" if frac else "")
        fpi = _ok(j).get("flops_per_image") if _ok(j) else None
        lines.append(
            f"| {net} | {bs} | {_fmt(fpi / 1e6 if fpi else None, '.2f')} | {_cell(j, 'compile_s')} | "
            f"{_cell(j, 'step_ms')} | {_cell(j, 'images_per_s', '.0f')} | {_cell(jb, 'step_ms')} | "
            f"{_cell(tb, 'step_ms')} | {_cell(te, 'step_ms')} | {compiled} | "
            f"{ratio_text(jms, _ok(tb) and tb['step_ms'])} | {ratio_text(jms, _tuned_torch_ms(doc, net, bs))} | "
            f"{util} |"
        )
    return lines


def _epoch_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    if not (keys := _measured(doc, keys, "jax_epoch", "torch_blog_epoch")):
        return []
    lines = [
        "Epoch and evaluation. Epoch: training only, compile excluded, seconds for 60,000 images (a partial epoch "
        "is scaled up); JAX runs the engine's scanned chunks, torch the blog's DataLoader loop; a JAX epoch's step "
        "is its time per step, against tuned torch's step (a chunk allocates its temporaries once for all its "
        "steps, a single jitted step once per call). Evaluation: the test set at the same batch size.",
        "",
        "| network | batch | JAX epoch s | JAX epoch compile s | blog epoch s | JAX vs blog epoch | JAX epoch ms/step "
        "| JAX epoch step vs tuned torch | JAX eval img/s | torch tuned eval img/s | blog test pass img/s |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for net, bs in keys:
        je, tbe, jev, tev = (
            find(doc, k, net, bs, ok=False) for k in ("jax_epoch", "torch_blog_epoch", "jax_eval", "torch_tuned_eval")
        )
        lines.append(
            f"| {net} | {bs} | {_cell(je, 'full_epoch_s_estimate')} | {_cell(je, 'compile_s')} | "
            f"{_cell(tbe, 'full_epoch_s_estimate')} | "
            f"{ratio_text(_ok(je) and je['full_epoch_s_estimate'], _ok(tbe) and tbe['full_epoch_s_estimate'])} | "
            f"{_cell(je, 'step_ms')} | {ratio_text(_ok(je) and je['step_ms'], _tuned_torch_ms(doc, net, bs))} | "
            f"{_cell(jev, 'images_per_s', '.0f')} | {_cell(tev, 'images_per_s', '.0f')} | "
            f"{_cell(tbe, 'test_images_per_s', '.0f')} |"
        )
    return lines


def _paired_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    kinds = ("paired_step", "paired_epoch")
    rows = [(net, bs, kind, find(doc, kind, net, bs, ok=False)) for net, bs in keys for kind in kinds]
    rows = [row for row in rows if row[3] is not None]
    if not rows:
        return []
    lines = [
        "Paired: JAX and tuned torch compiled in one process, their calls alternating (one each per round, the "
        "order swapped every round); ratio = JAX's time / torch's in the same round, its median and the 95 % "
        "interval of that median (order statistics). step: a jitted step; epoch: a JAX epoch over the bench's "
        "images (chunks, batch preparation, metrics fetched) against as many tuned torch steps.",
        "",
        "| network | batch | what | rounds | JAX ms/step | torch tuned ms/step | JAX / torch | 95 % interval "
        "| verdict |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for net, bs, kind, rec in rows:
        what = kind.removeprefix("paired_")
        if rec["status"] != "ok":
            lines.append(f"| {net} | {bs} | {what} | - | {rec['status']} | - | - | - | - |")
            continue
        interval = rec.get("ratio_interval_95")
        lines.append(
            f"| {net} | {bs} | {what} | {rec['rounds']} | {rec['step_ms']:.2f} | {rec['torch_step_ms']:.2f} | "
            f"{rec['ratio']:.3f} | {f'{interval[0]:.3f}-{interval[1]:.3f}' if interval else '-'} | {rec['verdict']} |"
        )
    return lines


def _measured(doc: dict, keys: list[tuple[str, int]], *kinds: str) -> list[tuple[str, int]]:
    """The (network, batch) keys with a record (of any status) of one of `kinds`: the rows of their table."""
    return [k for k in keys if any(find(doc, kind, *k, ok=False) for kind in kinds)]


def _autotune_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    if not (keys := _measured(doc, keys, "jax_step_autotune0")):
        return []
    lines = [
        "Autotuning. XLA compiles for a GPU by timing every cuDNN and Triton candidate of each convolution and matmul "
        "(`xla_gpu_autotune_level` 4, its default); at level 0 it takes each one's default untimed. The same jitted "
        "step, float32, compiled both ways in one process (* where one of the two was kept from an earlier run of "
        "the same device kind, `--resume`: another process, perhaps another machine):",
        "",
        "| network | batch | compile s | compile s, level 0 | ms/step | ms/step, level 0 | compile, level 0 / 4 | "
        "step, level 0 / 4 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, bs in keys:
        tuned, untuned = (find(doc, k, net, bs, ok=False) for k in ("jax_step", "jax_step_autotune0"))
        ratios = ["-", "-"]
        if _ok(tuned) and _ok(untuned):
            apart = "*" if tuned.get("session") != untuned.get("session") else ""
            ratios = [f"{untuned[k] / tuned[k]:.2f}{apart}" for k in ("compile_s", "step_ms")]
        lines.append(
            f"| {net} | {bs} | {_cell(tuned, 'compile_s')} | {_cell(untuned, 'compile_s')} | {_cell(tuned, 'step_ms')} "
            f"| {_cell(untuned, 'step_ms')} | {ratios[0]} | {ratios[1]} |"
        )
    return lines


def _seeds_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    if not (keys := _measured(doc, keys, "jax_epoch_seeds")):
        return []
    lines = [
        "Seeds. Training seconds per seed for 60,000 images, compile excluded: one seed's epoch (as `--seed-mode "
        "sequential` runs each), against N seeds in one vmapped program (`--seed-mode vmap`), divided by N.",
        "",
        "| network | batch | seeds | sequential s per seed | vmapped s per seed | vmapped vs sequential |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for net, bs in keys:
        one, many = (find(doc, k, net, bs, ok=False) for k in ("jax_epoch", "jax_epoch_seeds"))
        seq, vmapped = _ok(one) and one["full_epoch_s_estimate"], _ok(many) and many["seed_epoch_s"]
        verdict = "-"
        if seq and vmapped:
            verdict = (
                f"vmapped {seq / vmapped:.2f}x faster" if seq >= vmapped else f"sequential {vmapped / seq:.2f}x faster"
            )
        lines.append(
            f"| {net} | {bs} | {_cell(many, 'seeds', 'd')} | {_cell(one, 'full_epoch_s_estimate')} | "
            f"{_cell(many, 'seed_epoch_s')} | {verdict} |"
        )
    return lines


def _notes(doc: dict) -> list[str]:
    env, peak, settings, results = doc["env"], doc.get("peak_tflops") or {}, doc["settings"], doc["results"]
    notes = []
    if peak.get("key") == "cpu":
        cpu = peak.get("cpu") or {}
        notes.append(
            f"CPU peak is an estimate, {_fmt(peak.get('fp32'), '.3f')} TFLOP/s fp32 = {cpu.get('cores')} "
            f"vCPUs x {_fmt(cpu.get('ghz'))} GHz x {cpu.get('flop_per_cycle')} FLOP/cycle."
        )
    elif peak.get("key"):
        notes.append(
            f"Peak, {peak['key']} ({peak['source']}): fp32 {peak['fp32']}, TF32 {peak['tf32']}, bf16 "
            f"{peak['bf16']} TFLOP/s; f32 steps are judged against TF32, JAX's GPU default for f32 convs."
        )
    else:
        notes.append(f"Peak FLOP/s unknown for this device ({peak.get('source')}).")
    if env["platform"] == "cpu":
        notes.append(f"CPU: {(env.get('cpu') or {}).get('identity', (env.get('cpu') or {}).get('model'))}.")
        notes.append("JAX bf16: n/a on CPU (not measured).")
    elif not settings.get("bf16"):
        notes.append("JAX bf16: not requested (--bf16).")
    for r in results:
        if r["status"] != "ok":
            notes.append(f"{r['kind']} {r['network']} batch {r['batch_size']}: {r['status']}: {r.get('reason', '')}")
        if r.get("compile_error"):
            notes.append(
                f"torch.compile failed for {r['network']} batch {r['batch_size']}, eager numbers shown: "
                f"{r['compile_error']}"
            )
    return notes


def report(doc: dict) -> str:
    """Markdown: what ran where, the train-step table, the epoch/evaluation table, notes (peaks, failures)."""
    keys = []
    for rec in doc.get("results", []):
        if (rec["network"], rec["batch_size"]) not in keys:
            keys.append((rec["network"], rec["batch_size"]))
    keys.sort(key=lambda k: (NETWORKS.index(k[0]) if k[0] in NETWORKS else 99, k[1]))
    parts = [
        _header(doc),
        _step_table(doc, keys),
        _epoch_table(doc, keys),
        _paired_table(doc, keys),
        _autotune_table(doc, keys),
        _seeds_table(doc, keys),
        [f"- {n}" for n in _notes(doc)],
    ]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


def profile_report(rows: list[dict]) -> str:
    """Median and, in brackets, minimum per op (ms); on a loaded machine the minimum is the steadier of the two."""

    def both(r, k):
        return f"{_fmt(r.get(k + '_ms'))} ({_fmt(r.get(k + '_min_ms'))})" if r.get(k + "_ms") else "-"

    lines = ["| op | shape | JAX ms | torch ms |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r.get('shape', '')} | {both(r, 'jax')} | {both(r, 'torch')} |")
    return "\n".join(lines) + "\n"
