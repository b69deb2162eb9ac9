"""The JAX half of the benchmarks: a jitted train step, an epoch and a test pass, each as jaxmnist runs them."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp

from benchlib.environment import peak_for, utilisation
from benchlib.settings import Settings, config_for, real_batches
from benchlib.timing import flops_on_cpu, measure, measure_pipelined, pipelined_count, xla_flops
from jaxmnist import autotune, convs, engine, models, programs
from jaxmnist import data as data_lib
from jaxmnist.presets import Config
from jaxmnist.seeds import Seeds

_STATES: dict = {}


def conv_plan(config: Config, settings: Settings) -> convs.ConvPlan:
    """How the network's convolutions run at this batch size, chosen as jaxmnist.train chooses (`--conv-impl`;
    auto: measured once per machine and cached), once per run: step, epoch and evaluation share it."""
    return _conv_plan(config.model, config.num_classes, config.batch_size, settings.conv_impl)


@functools.lru_cache(maxsize=None)
def _conv_plan(network: str, num_classes: int | None, batch_size: int, impl: str | None) -> convs.ConvPlan:
    model = models.get_model(network, num_classes=num_classes)
    return autotune.plan_for(impl, model, batch_size, say=lambda m: print(m, flush=True))


def plan_record(plan: convs.ConvPlan) -> dict:
    return {"conv_plan": plan.to_json(), "conv_plan_text": plan.describe()}


def initial_state(config: Config, dtype_name: str, plan: convs.ConvPlan = convs.XLA):
    """A fresh TrainState for (network, optimiser, dtype, conv plan), initialised once per run and copied on every
    use: the init itself compiles, which costs seconds (kept for the whole run: all the networks' states are
    ~0.6 GB)."""
    key = (config.model, config.optimizer, config.lr, config.momentum, dtype_name, plan)
    if key not in _STATES:
        dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dtype_name]
        _STATES[key] = engine.create_state(config, jax.random.PRNGKey(0), dtype=dtype, conv_plan=plan)
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, _STATES[key])


@dataclasses.dataclass
class StepProgram:
    """A compiled train step and its state, stepping through a few real, normalised batches on the device."""

    compiled: Any
    lowered: Any
    lower_s: float  # tracing and lowering
    compile_s: float  # lowering plus XLA's compile: what a first call costs beyond a step
    plan: convs.ConvPlan
    state: Any
    batches: list
    i: int = 0

    def step(self):
        """One step on the next batch: (state, metrics), not synced (dispatch returns before the step ends)."""
        self.state, metrics = self.compiled(self.state, self.batches[self.i % len(self.batches)])
        self.i += 1
        return self.state, metrics


# XLA's GPU autotuning level that `jax_step_autotune0` compiles with (XLA's default is 4: every cuDNN and Triton
# candidate of each convolution and matmul timed at compile time): 0 takes each one's default algorithm untimed.
NO_AUTOTUNING = {"xla_gpu_autotune_level": 0}


def step_program(
    network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, dtype: str = "f32", options=None
) -> StepProgram:
    """The jitted train step (forward, backward, optimiser) as jaxmnist runs it, its state donated, compiled (with
    XLA `options` beside the plan's)."""
    config = config_for(network, batch_size)
    plan = conv_plan(config, settings)
    state = initial_state(config, dtype, plan)
    batches = [{"image": data_lib.normalize(x), "label": jnp.asarray(y)} for x, y in real_batches(data, batch_size, 4)]
    jax.block_until_ready(batches)
    options = {**plan.compiler_options, **(options or {})}
    step = jax.jit(engine.train_step, donate_argnums=0, compiler_options=options)
    t0 = time.perf_counter()
    lowered = step.lower(state, batches[0])
    lower_s = time.perf_counter() - t0
    compiled = lowered.compile()
    return StepProgram(compiled, lowered, lower_s, time.perf_counter() - t0, plan, state, batches)


def jax_step(
    network: str,
    batch_size: int,
    data: data_lib.Dataset,
    settings: Settings,
    peak: dict,
    dtype: str = "f32",
    options: dict | None = None,
) -> dict:
    """One jitted train step (forward, backward, optimiser) on real, normalised batches already on the device.

    Reports lowering/compile time, FLOPs per image (XLA cost analysis, forward + backward + update), the median
    of synced steps, the pipelined per-step time, images/s and the fraction of the device's peak. `options`: XLA
    options to compile with (recorded).
    """
    program = step_program(network, batch_size, data, settings, dtype, options)
    flops = xla_flops(program.lowered)
    if flops is None:
        flops = flops_on_cpu(engine.train_step, program.state, program.batches[0])
    flops_compiled = xla_flops(program.compiled)
    t = measure(
        program.step,
        jax.block_until_ready,
        warmup=settings.warmup,
        iters=settings.iters,
        max_s=settings.max_s,
        min_iters=settings.min_iters,
    )
    n = pipelined_count(t.median, settings.iters, settings.max_s)
    pipelined = measure_pipelined(program.step, jax.block_until_ready, n)
    loss = float(jax.device_get(program.step()[1]["loss"]))
    platform_name = jax.devices()[0].platform
    fpi = flops / batch_size if flops else None
    ips = batch_size / t.median
    return {
        "dtype": dtype,
        "xla_options": options or {},
        "lower_s": program.lower_s,
        "compile_s": program.compile_s,
        "flops_per_image": fpi,
        "flops_per_image_compiled_hlo": flops_compiled / batch_size if flops_compiled else None,
        "step": t.summary(),
        "step_ms": 1e3 * t.median,
        "pipelined_step_ms": 1e3 * pipelined,
        "pipelined_n": n,
        "images_per_s": ips,
        "last_loss": loss,
        **plan_record(program.plan),
        **utilisation(fpi, ips, *peak_for(peak, platform_name, dtype)),
    }


@dataclasses.dataclass
class EpochProgram:
    """jaxmnist.train's compiled epoch (its chunks over device-resident uint8 data) and the state it trains."""

    training: Any
    state: Any
    train: Any  # the device-resident training split
    steps: int
    bounds: list
    unroll: bool
    compile_s: float
    plan: convs.ConvPlan
    epoch: int = 0

    def run(self):
        """One epoch, its metrics fetched (synced), as jaxmnist.train's loop runs it."""
        self.state, _, _ = programs.train_epoch(self.training, self.state, self.train, self.epoch, mode=True)
        self.epoch += 1


def epoch_program(
    network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, n_seeds: int = 1
) -> EpochProgram:
    """An epoch over `settings.train_size` images (all: 0) as jaxmnist.train runs it, compiled; `n_seeds` > 1:
    that many seeds in one vmapped program (`--seeds N --seed-mode vmap`)."""
    config = config_for(network, batch_size).replace(train_size=settings.train_size)
    device_data = programs.put_on_device(data, config)
    steps = programs.epoch_steps(config, device_data.n_train)
    unroll = jax.default_backend() == "cpu"
    bounds = engine.chunk_bounds(steps, settings.chunk_steps, unroll)
    seeds = Seeds(tuple(range(n_seeds)), vmapped=n_seeds > 1)
    plan = conv_plan(config, settings)
    if n_seeds == 1:
        state = initial_state(config, "f32", plan)
    else:
        state = seeds.create_state(config, total_steps=steps, conv_plan=plan)
    t0 = time.perf_counter()
    training = programs.compile_training(config, state, device_data.train, bounds, unroll, seeds, conv_plan=plan)
    compile_s = time.perf_counter() - t0
    return EpochProgram(training, state, device_data.train, steps, bounds, unroll, compile_s, plan)


def jax_epoch(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, n_seeds: int = 1) -> dict:
    """A whole training epoch as jaxmnist.train runs it (its compiled chunks on device-resident uint8 data, its
    epoch loop), compile time reported apart. Evaluation is not included (see `jax_eval`). `n_seeds` > 1: that
    many seeds in one vmapped program (`--seeds N --seed-mode vmap`), `seed_epoch_s` the time per seed."""
    program = epoch_program(network, batch_size, data, settings, n_seeds)
    steps = program.steps
    epoch_s = []
    for _ in range(settings.epoch_repeats):
        t0 = time.perf_counter()
        program.run()
        epoch_s.append(time.perf_counter() - t0)
    best = min(epoch_s)
    return {
        "compile_s": program.compile_s,
        "steps": steps,
        "images": steps * batch_size,
        "unroll": program.unroll,
        "chunks": [e - s for s, e in program.bounds],
        "epoch_s_each": epoch_s,
        "epoch_s": best,
        "step_ms": 1e3 * best / steps,
        "images_per_s": n_seeds * steps * batch_size / best,
        "full_epoch_s_estimate": best * (len(data.train_labels) // batch_size) / steps,
        "seeds": n_seeds,
        "seed_epoch_s": best * (len(data.train_labels) // batch_size) / steps / n_seeds,
        **plan_record(program.plan),
    }


def jax_eval(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings) -> dict:
    """The test pass as jaxmnist.train runs it (full batches, then the remainder) at `batch_size`."""
    config = config_for(network, batch_size).replace(eval_batch_size=batch_size)
    n = min(settings.eval_size or len(data.test_labels), len(data.test_labels))
    data = dataclasses.replace(data, test_images=data.test_images[:n], test_labels=data.test_labels[:n])
    device_data = programs.put_on_device(data, config)
    plan = conv_plan(config, settings)
    state = initial_state(config, "f32", plan)
    t0 = time.perf_counter()
    evals = programs.compile_eval_passes(config, state, device_data, conv_plan=plan)
    compile_s = time.perf_counter() - t0
    t = measure(
        lambda: evals(state, device_data, epoch=0),
        lambda _: None,  # the passes fetch its result: synchronised
        warmup=1,
        iters=max(3, settings.epoch_repeats + 1),
        max_s=settings.max_s,
        min_iters=2,
    )
    return {
        "compile_s": compile_s,
        "images": n,
        "pass": t.summary(),
        "pass_s": t.median,
        "images_per_s": n / t.median,
        **plan_record(plan),
    }
