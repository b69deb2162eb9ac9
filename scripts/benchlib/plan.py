"""The plan of a benchmark run and the budget runner that works through it.

`build_plan` lists every measurement the settings ask for, most useful first (`priority`); `Runner` runs them
under a soft time budget, records failures (OOM, compile errors) instead of stopping, and rewrites the JSON file
after every measurement, so a killed run keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from benchlib import jax_side
from benchlib.environment import first_line
from benchlib.settings import Settings
from jaxmnist import data as data_lib
from jaxmnist import runlog
from jaxmnist.models import MODELS, TORCHVISION

FORMAT_VERSION = 1


def is_oom(e: BaseException) -> bool:
    """Out of device memory, from JAX (RESOURCE_EXHAUSTED) or torch (OutOfMemoryError)."""
    text = f"{type(e).__name__} {e}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def release_memory() -> None:
    """Between measurements: drop the last one's buffers, and hand torch's cached GPU blocks back so that JAX
    (which shares the GPU in this process) can use them."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class Item:
    """One measurement of the plan: `fn` returns a dict of raw results."""

    kind: str
    network: str
    batch_size: int
    fn: Callable[[], dict]


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of measurement: its framework, whether it is one of the core three (the step in JAX, tuned torch
    and the blog's loop), whether it times an epoch or a test pass (only at the epoch batch sizes), a guess of
    its wall time for the cnn (compile included; the budget's prior until it has run once), and what runs it:
    `measure(context, network, batch_size) -> dict`."""

    framework: str
    core: bool
    epoch: bool
    prior_s: float
    measure: Callable


def _torch_side():
    from benchlib import torch_side  # imports torch: only when a torch measurement runs

    return torch_side


def _paired():
    from benchlib import paired  # imports torch, as _torch_side

    return paired


def _fpi(c, net, bs):  # torch's FLOPs per image: the same math, counted by XLA for the JAX step
    rec = find(c.doc, "jax_step", net, bs)
    return rec.get("flops_per_image") if rec else None


# Every kind, in the order the plan lists one network's measurements at one batch size. `c` is a Context.
KINDS = {
    "jax_step": Kind("jax", True, False, 5, lambda c, n, b: jax_side.jax_step(n, b, c.data, c.settings, c.peak)),
    "torch_tuned": Kind("torch", True, False, 5, lambda c, n, b: _torch_side().torch_tuned_step(
        n, b, c.data, c.settings, c.torch_device, c.peak, _fpi(c, n, b))),
    "torch_blog_step": Kind("torch", True, False, 4, lambda c, n, b: _torch_side().torch_blog_step(
        n, b, c.data, c.settings, c.torch_device, c.peak, _fpi(c, n, b))),
    "torch_tuned_compiled": Kind("torch", False, False, 20, lambda c, n, b: _torch_side().torch_tuned_step(
        n, b, c.data, c.settings, c.torch_device, c.peak, _fpi(c, n, b), compile=True)),
    "jax_step_bf16": Kind("jax", False, False, 5, lambda c, n, b: jax_side.jax_step(
        n, b, c.data, c.settings, c.peak, "bf16")),
    # How much of the GPU compile is XLA's autotuning, and what skipping it costs each step (GPU only).
    "jax_step_autotune0": Kind("jax", False, False, 5, lambda c, n, b: jax_side.jax_step(
        n, b, c.data, c.settings, c.peak, options=jax_side.NO_AUTOTUNING)),
    "jax_epoch": Kind("jax", False, True, 8, lambda c, n, b: jax_side.jax_epoch(n, b, c.data, c.settings)),
    "jax_epoch_seeds": Kind("jax", False, True, 30, lambda c, n, b: jax_side.jax_epoch(
        n, b, c.data, c.settings, n_seeds=c.settings.seeds)),
    "jax_eval": Kind("jax", False, True, 3, lambda c, n, b: jax_side.jax_eval(n, b, c.data, c.settings)),
    "torch_blog_epoch": Kind("torch", False, True, 6, lambda c, n, b: _torch_side().torch_blog_epoch(
        n, b, c.data, c.settings, c.torch_device)),
    "torch_tuned_eval": Kind("torch", False, True, 2, lambda c, n, b: _torch_side().torch_tuned_eval(
        n, b, c.data, c.settings, c.torch_device)),
    # JAX and tuned torch alternating in one measurement (benchlib/paired.py): "torch", as they need it.
    "paired_step": Kind("torch", False, False, 12, lambda c, n, b: _paired().paired_step(
        n, b, c.data, c.settings, c.torch_device)),
    "paired_epoch": Kind("torch", False, True, 25, lambda c, n, b: _paired().paired_epoch(
        n, b, c.data, c.settings, c.torch_device)),
}  # fmt: skip
EPOCH_KINDS = tuple(name for name, kind in KINDS.items() if kind.epoch)
# The other networks cost more than the cnn by these factors (a guess, replaced by what was measured, see
# Runner.estimate). `fast` had none and counted as 5: the H200 lease skipped its JAX step as "needing ~98 s"; its
# training compiled in 38 s there against the cnn's 15-27 s.
NETWORK_WEIGHT = {"cnn": 1, "cnn_deep": 1.5, "fast": 2, "resnet": 3, "resnet18": 4, "resnet101": 15}


class Runner:
    """Runs measurements in order under a soft time budget and keeps the JSON file up to date.

    An item whose estimated cost no longer fits the budget is skipped (recorded, with the reason); later,
    cheaper items still run. A started item always runs to the end, so keep a margin below any hard limit.
    Failures are recorded per item (status 'oom' or 'error') and the run goes on.
    """

    def __init__(
        self,
        doc: dict,
        out: Path | None,
        budget_s: float | None,
        log: Callable[[str], None] = print,
        t0: float | None = None,
    ):
        self.doc, self.out, self.budget_s, self.log = doc, out, budget_s, log
        self.t0 = time.perf_counter() if t0 is None else t0  # pass the process start to count imports too
        self.costs: dict[tuple[str, str], list[tuple[int, float, float]]] = {}  # (batch, wall s, compile s)
        for rec in doc.setdefault("results", []):  # kept from an earlier run (--resume): what they cost there
            if "wall_s" in rec:
                self._count(rec)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def estimate(self, item: Item) -> float:
        """Seconds the item will likely take. The same kind and network measured at another batch size: its
        compile part as is, the rest scaled with the batch. Else the same kind on other networks, scaled by
        NETWORK_WEIGHT (so the priors calibrate themselves to the machine). Else the prior."""
        weight = lambda net: NETWORK_WEIGHT.get(net, 5)  # noqa: E731
        seen = self.costs.get((item.kind, item.network))
        if seen:
            return max(fixed + (wall - fixed) * max(1.0, item.batch_size / bs) for bs, wall, fixed in seen)
        others = [
            wall * weight(item.network) / weight(net) * max(1.0, item.batch_size / bs)
            for (kind, net), runs in self.costs.items()
            if kind == item.kind
            for bs, wall, _ in runs
        ]
        if others:
            return max(others)
        return KINDS[item.kind].prior_s * weight(item.network) if item.kind in KINDS else 10 * weight(item.network)

    def run(self, item: Item) -> dict:
        if rec := kept(self.doc, item.kind, item.network, item.batch_size):
            when = rec["session"]["created"]
            self.log(f"  kept {item.kind:22s} {item.network:9s} bs {item.batch_size:5d} from the run of {when}")
            return rec
        base = {"kind": item.kind, "network": item.network, "batch_size": item.batch_size}
        est = self.estimate(item)
        if self.budget_s is not None and self.elapsed() + est > self.budget_s:
            rec = {
                **base,
                "status": "skipped",
                "reason": f"budget: needs ~{est:.0f} s, {self.budget_s - self.elapsed():.0f} s left",
            }
            self.log(f"  skip {item.kind:22s} {item.network:9s} bs {item.batch_size:5d}: {rec['reason']}")
            return self._add(rec)
        t0 = time.perf_counter()
        try:
            rec = {**base, "status": "ok", **item.fn()}
        except KeyboardInterrupt:
            raise
        except Exception as e:
            rec = {
                **base,
                "status": "oom" if is_oom(e) else "error",
                "reason": first_line(e),
                "traceback": traceback.format_exc(limit=4)[-2000:],
            }
        release_memory()
        rec["wall_s"] = time.perf_counter() - t0
        rec["estimate_s"] = est
        self._count(rec)
        detail = (
            f"{rec['step_ms']:.2f} ms/step"
            if "step_ms" in rec
            else f"{rec['images_per_s']:.0f} img/s"
            if "images_per_s" in rec
            else rec.get("reason", "")
        )
        self.log(
            f"  {rec['status']:4s} {item.kind:22s} {item.network:9s} bs {item.batch_size:5d} "
            f"[{rec['wall_s']:6.1f} s, at {self.elapsed():6.1f} s] {detail}"
        )
        return self._add(rec)

    def _count(self, rec: dict) -> None:
        """A measurement's cost, for the estimates of the rest: its wall time, of which its compile part."""
        fixed = min(rec["wall_s"], sum(rec.get(k) or 0.0 for k in ("compile_s", "first_step_s")))
        self.costs.setdefault((rec["kind"], rec["network"]), []).append((rec["batch_size"], rec["wall_s"], fixed))

    def _add(self, rec: dict) -> dict:
        self.doc["results"].append(rec)
        self.save()
        return rec

    def save(self, finished: bool = False) -> None:
        self.doc["elapsed_s"] = self.elapsed()
        self.doc["finished"] = finished
        self.doc["load_avg_end"] = os.getloadavg()
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            runlog.atomic_write(self.out, json.dumps(self.doc, indent=1, default=str).encode())


def kept(doc: dict, kind: str, network: str, batch_size: int) -> dict | None:
    """The record an earlier run left for this measurement (--resume: `earlier_results` puts them first), if any."""
    rec = find(doc, kind, network, batch_size, ok=False)
    return rec if rec is not None and "session" in rec else None


def find(doc: dict, kind: str, network: str, batch_size: int, ok: bool = True) -> dict | None:
    for rec in doc.get("results", []):
        if (rec["kind"], rec["network"], rec["batch_size"]) == (kind, network, batch_size):
            if not ok or rec["status"] == "ok":
                return rec
    return None


# The small networks (all but torchvision's): torch.compile of these is cheap enough to rank with the core ones.
SMALL_NETWORKS = tuple(n for n in MODELS if n not in TORCHVISION)


def priority(kind: str, network: str, batch_size: int, settings: Settings) -> int:
    """Tier of a measurement; lower runs first, so a budget cut loses the least useful ones:

    0. at the first batch size: JAX step, torch tuned (eager) and blog steps, torch.compile of the blog's nets;
    1. epoch and evaluation (at the epoch batch sizes), JAX bf16, JAX without autotuning and the paired step at
       the first batch size;
    2. torch.compile of the torchvision ResNets (minutes of Inductor compiling);
    3. the other batch sizes.
    """
    first = batch_size == settings.batch_sizes[0]
    if first and (KINDS[kind].core or kind == "torch_tuned_compiled" and network in SMALL_NETWORKS):
        return 0
    if KINDS[kind].epoch or first and kind in ("jax_step_bf16", "jax_step_autotune0", "paired_step"):
        return 1
    return 2 if kind == "torch_tuned_compiled" else 3


@dataclasses.dataclass
class Context:
    """What every measurement of a run shares."""

    settings: Settings
    data: data_lib.Dataset
    peak: dict
    torch_device: str | None
    doc: dict  # the results so far (torch's FLOP counts come from the JAX step's)


def build_plan(
    settings: Settings, data: data_lib.Dataset, peak: dict, torch_device: str | None, doc: dict
) -> list[Item]:
    """Every measurement the settings ask for, ordered by `priority`, then network, batch size and kind."""
    import jax

    context = Context(settings, data, peak, torch_device if settings.torch else None, doc)

    def first(bs: int) -> bool:
        return bs == settings.batch_sizes[0]

    def wanted(name: str, bs: int) -> bool:
        kind = KINDS[name]
        if kind.framework == "torch" and context.torch_device is None:
            return False
        if kind.epoch and bs not in settings.epoch_batch_sizes:
            return False
        if name == "jax_step_bf16":
            return settings.bf16 and jax.default_backend() != "cpu"
        if name == "jax_step_autotune0":
            return first(bs) and jax.default_backend() == "gpu"  # XLA autotunes on GPUs only
        if name == "torch_tuned_compiled":
            return settings.torch_compile and bs in settings.compile_batch_sizes
        if name.startswith("paired_"):
            return settings.pair_rounds > 0 and bs in settings.epoch_batch_sizes
        if name == "jax_epoch_seeds":
            return settings.seeds > 1  # --seeds 1: nothing to compare one seed's epoch with
        return True

    items = [
        Item(name, net, bs, lambda m=KINDS[name].measure, n=net, b=bs: m(context, n, b))
        for net in settings.networks
        for bs in settings.batch_sizes
        for name in KINDS
        if wanted(name, bs)
    ]
    order = lambda i: (  # noqa: E731
        priority(i.kind, i.network, i.batch_size, settings),
        settings.networks.index(i.network),
        settings.batch_sizes.index(i.batch_size),
        list(KINDS).index(i.kind),
    )
    return sorted(items, key=order)


# Settings that choose which measurements to take, not how: a resumed run may ask for others.
SELECTION = ("networks", "batch_sizes", "epoch_batch_sizes", "compile_batch_sizes", "budget_s")


def conditions(env: dict) -> dict:
    """What in a run's environment changes its numbers: device, versions, driver, the frameworks' precision and
    cuDNN settings, the XLA/torch environment variables; not the commit, the load or the time."""
    torch_env = env.get("torch") or {}
    gpus = (env.get("nvidia_smi") or {}).get("gpus") or [{}]
    return {
        "platform": env.get("platform"),
        "device_kind": env.get("device_kind"),
        "versions": env.get("versions"),
        "driver": gpus[0].get("driver_version"),
        "jax_default_matmul_precision": env.get("jax_default_matmul_precision"),
        "env_vars": env.get("env_vars"),
        "torch": {k: v for k, v in torch_env.items() if k not in ("threads", "device")},
    }


def earlier_results(path: Path, doc: dict) -> tuple[list[dict], str | None]:
    """(the records of the earlier run in `path` that `doc`'s run can keep, None), or ([], why none): its
    measurements and its out-of-memory failures (they would fail again; a one-off stays kept until RESUME=0 or
    without --resume), kept only under the same `conditions` and settings (SELECTION aside); each record names the
    run it came from (`session`: when, at which commit)."""
    try:
        earlier = json.loads(path.read_text())
    except FileNotFoundError:
        return [], f"no {path} yet"
    except (OSError, ValueError) as e:
        return [], f"cannot read {path}: {first_line(e)}"
    before, now = conditions(earlier.get("env", {})), conditions(doc["env"])
    for key in before:
        if before[key] != now[key]:
            return [], f"{path} was measured with another {key}: {before[key]}"
    how = lambda settings: {k: v for k, v in settings.items() if k not in SELECTION}  # noqa: E731
    if earlier.get("format") != doc["format"] or how(earlier.get("settings", {})) != how(
        json.loads(json.dumps(doc["settings"]))  # tuples as the JSON holds them, as lists
    ):
        return [], f"{path} was measured with other settings or another format"
    session = {"created": earlier.get("created"), "commit": earlier.get("env", {}).get("commit")}
    kept = [{"session": session, **r} for r in earlier.get("results", []) if r.get("status") in ("ok", "oom")]
    return kept, None


def new_doc(settings: Settings, env: dict, peak: dict, argv: list[str] | None = None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "argv": argv,
        "env": env,
        "peak_tflops": peak,
        "settings": dataclasses.asdict(settings),
        "results": [],
    }
