"""A training run on the host, as named phases: prepare (data on the device, states, resume), compile (every
program before the first epoch), the epochs (train, evaluate, step the plateau rule, log, checkpoint), finish
(reports, the run record). `train_and_evaluate` trains one seed; `train_seeds` several, vmapped or in turn.

    from jaxmnist import presets, trainer
    result = trainer.train_and_evaluate(presets.PRESETS["cnn_cpu"].replace(epochs=1))
    result.record["final_acc"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import checkpoint, cli, engine, evaluate, optim, programs, runlog, weights
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import Diverged, UsageError
from jaxmnist.continuation import nothing_to_train
from jaxmnist.convs import ConvPlan
from jaxmnist.distributed import Placement
from jaxmnist.presets import Config, interim_steps, plateau_arguments, trains_in_eval_mode, validate
from jaxmnist.programs import (
    DeviceData,
    EvalPasses,
    ProgramCache,
    RecompileWatch,
    Training,
    epoch_steps,
    put_on_device,
    train_epoch,
)
from jaxmnist.resume import (
    SeedRun,
    choose_conv_plan,
    continued_base,
    continued_config,
    diverged_error,
    host_meta,
    resume_from,
    save,
)
from jaxmnist.seeds import Seeds, choose_seed_mode, seeds_summary


@dataclasses.dataclass(frozen=True)
class Options:
    """How a run runs, apart from the experiment itself (Config): where it reads and writes, how it executes.

    logdir/logdirs: one seed's log directory, or each vmapped seed's. chunk_steps, unroll: an epoch's chunks
    (`engine.chunk_bounds`: default 8 unrolled steps on the CPU, an eighth of the epoch as a rolled scan
    elsewhere). stop_after_epoch: simulates a killed run (tests). placement: one device, or a mesh for data
    parallelism. init: weights to start from instead of the initialisation ({'params', 'batch_stats'}, e.g. a
    PyTorch state_dict's). report: the evaluation report into each logdir at the end. conv_impl: how the
    convolutions run (`--conv-impl`). given: what a resumed run takes from its command line rather than its
    checkpoint."""

    preset: str | None = None
    data_dir: str | None = None
    logdir: str | os.PathLike | None = None
    logdirs: tuple | None = None
    workdir: str | os.PathLike | None = None
    resume: bool = False
    chunk_steps: int | None = None
    unroll: bool | None = None
    progress: bool = True
    stop_after_epoch: int | None = None
    placement: Placement = Placement()
    init: dict | None = None
    report: bool = True
    conv_impl: str | None = None
    out: object = None
    given: frozenset[str] | None = None  # the Config fields set on the command line; None: all (continuation)


@dataclasses.dataclass
class Result:
    state: engine.TrainState
    record: dict


@dataclasses.dataclass
class Run:
    """What the epochs work on: the data on the device, the state (one seed's or vmapped seeds'), each seed's
    host side, the checkpointer, and the epoch to start from."""

    config: Config
    seeds: Seeds
    data: DeviceData
    steps: int
    plan: ConvPlan
    state: engine.TrainState
    seed_runs: list[SeedRun]
    ckpt: Checkpointer | None
    first_epoch: int


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


# ------------------------------------------------------------------------------------------ phases
def prepare(config: Config, seeds: Seeds, opts: Options, data: data_lib.Dataset | None) -> Run:
    """Data on the device, the convolution plan, fresh states (or the checkpoint's, with --resume), each seed's
    plateau rule and report."""
    say = runlog.Report(opts.out).say
    # The plan before the data: a --conv-impl that cannot run here is one line, nothing read or downloaded first. A
    # resumed run's is its checkpoint's; a new run's workdir is made once the data have loaded (none left behind).
    resumed = Checkpointer(opts.workdir) if opts.resume else None  # train_run refused --resume without --workdir
    meta = resumed.read_meta() if resumed else None  # read once: the settings and the plan it continues
    config = continued_config(meta, config, seeds, opts.given, opts.workdir)
    plan = choose_conv_plan(config, opts.conv_impl, meta, opts.placement, say)
    data = put_on_device(data or data_lib.load(config.dataset, opts.data_dir, progress=opts.progress), config,
                         opts.placement)  # fmt: skip
    steps = epoch_steps(config, data.n_train)
    ckpt = resumed or (Checkpointer(opts.workdir) if opts.workdir else None)
    state = seeds.create_state(config, total_steps=steps * config.epochs, variables=opts.init, conv_plan=plan)
    state = opts.placement.replicate(state)
    runs = [seed_run(config, seed, logdir, seeds, data, opts, plan) for seed, logdir in zip(seeds.seeds, logdirs(opts))]
    for note in ckpt.damaged if ckpt else ():
        say(note)
    state, first_epoch = resume_from(ckpt, state, config, runs, seeds, say) if opts.resume else (state, 0)
    return Run(config, seeds, data, steps, plan, state, runs, ckpt, first_epoch)


def logdirs(opts: Options) -> list:
    return list(opts.logdirs or [opts.logdir])


def seed_run(config: Config, seed: int, logdir, seeds: Seeds, data: DeviceData, opts: Options,
             plan: ConvPlan) -> SeedRun:  # fmt: skip
    """One seed's plateau rule and report (its lines prefixed with the seed when vmapped)."""
    report = runlog.Report.for_run(
        opts.out, logdir, framework="jax", preset=opts.preset, config=config.replace(seed=seed), device=device_name(),
        n_train=data.n_train, prefix=f"seed {seed} " if seeds.vmapped else "", convolutions=plan.describe(),
    )  # fmt: skip
    return SeedRun(seed, optim.ReduceLROnPlateau(config.lr, **plateau_arguments(config)), report)


def compile_programs(run: Run, opts: Options, cache: ProgramCache) -> tuple[Training, EvalPasses, float]:
    """Every program the epochs call, compiled now (or taken from an earlier seed's run); the seconds it took.
    The run's state takes the static fields of the state the programs were compiled for."""
    t0 = time.perf_counter()
    unroll = jax.default_backend() == "cpu" if opts.unroll is None else opts.unroll
    bounds = engine.chunk_bounds(run.steps, opts.chunk_steps, unroll)
    training, evals, run.state = cache.get(run.config, run.state, run.data, bounds, unroll, run.seeds,
                                           opts.placement, run.plan)  # fmt: skip
    return training, evals, time.perf_counter() - t0


def announce(run: Run, opts: Options, compile_s: float) -> None:
    """The lines before the first epoch: device, experiment, data, schedule, compile time, convolutions, the
    devices and seeds, the blog's header."""
    notes = [f"compile: {compile_s:.2f} s (kept out of the epoch times)", f"convolutions: {run.plan.describe()}"]
    config, placement = run.config, opts.placement
    if placement.mesh is not None:
        notes.append(
            f"data parallel over {placement.size} devices in {jax.process_count()} process(es): "
            f"each step's {config.batch_size} images split {config.batch_size // placement.size} per device"
        )
    if run.seeds.vmapped:
        listed = ", ".join(map(str, run.seeds.seeds))
        notes.append(f"seeds {listed} in one vmapped program: epoch times are theirs together")
    data = run.data
    runlog.Report(opts.out).preamble(
        f"device: {device_name()} ({jax.default_backend()}), jax {jax.__version__}",
        config,
        opts.preset,
        data.source,
        n_train=data.n_train,
        steps=run.steps,
        tail="ragged tail dropped",
        n_test=int(data.test[1].shape[0]),
        n_val=int(data.val[1].shape[0]) if data.val else None,
        monitor="validation accuracy" if data.val else "test accuracy",
        notes=tuple(notes),
    )


def run_epoch(run: Run, training: Training, evals: EvalPasses, epoch: int, progress: bool) -> float:
    """One epoch: train, evaluate, step each seed's plateau rule, log, checkpoint. Returns its seconds (train and
    evaluation). A divergence ends the run in one line; nothing of the epoch is saved."""
    config, seeds = run.config, run.seeds
    t_start = time.perf_counter()

    def evaluate_now(state, step: int) -> None:  # an interim evaluation (Config.evals_per_epoch)
        test, val = evals(state, run.data, epoch)
        for i, r in enumerate(run.seed_runs):
            r.report.interim(epoch, step, run.steps, test=seeds.take(test, i),
                             val=seeds.take(val, i) if val else None, at_s=time.perf_counter() - t_start)  # fmt: skip

    interim = (interim_steps(config, run.steps), evaluate_now)
    with runlog.epoch_bar(epoch, config.epochs, run.steps, progress) as bar:
        mode = not trains_in_eval_mode(config, epoch)
        try:
            run.state, batch_acc, batch_loss = train_epoch(training, run.state, run.data.train, epoch, mode, bar,
                                                           interim)  # fmt: skip
        except Diverged as e:
            raise diverged_error(e, run.ckpt) from None
    test, val = evals(run.state, run.data, epoch)
    seconds = time.perf_counter() - t_start
    lr = np.atleast_1d(jax.device_get(run.state.step_lr()))  # the rate the next step will use, per seed
    if config.plateau and not config.blog_quirks:  # quirk 3: the blog never steps its scheduler
        monitored = np.atleast_1d((val or test)["accuracy"])
        rates = [r.plateau.step(float(acc)) for r, acc in zip(run.seed_runs, monitored)]
        run.state = run.state.replace(lr=seeds.array(rates, jnp.float32))
    next_lr = np.atleast_1d(jax.device_get(run.state.step_lr()))
    for i, r in enumerate(run.seed_runs):
        r.report.epoch(epoch, test=seeds.take(test, i), val=seeds.take(val, i) if val else None,
                       batch_acc=seeds.take(batch_acc, i), batch_loss=seeds.take(batch_loss, i), lr=float(lr[i]),
                       next_lr=float(next_lr[i]), time_s=seconds)  # fmt: skip
    if run.ckpt:
        meta = {**host_meta(run.seed_runs, seeds), "conv_plan": run.plan.to_json()}
        save(run.ckpt, run.state, config, epoch, float(np.mean(test["accuracy"])), meta)
    return seconds


def write_reports(run: Run) -> None:
    """Each logged seed's evaluation report (jaxmnist.evaluate) of its final weights on the test set, into its
    logdir and its TensorBoard events."""
    logged = [(i, r) for i, r in enumerate(run.seed_runs) if r.report.log]
    if not logged:
        return
    # Everything on the host first: on a mesh of several processes only process 0 writes reports, and a program
    # over the mesh's global arrays (even a slice) would wait for the others.
    images, labels = np.asarray(run.data.test[0]), np.asarray(run.data.test[1])
    variables = jax.device_get(run.state.eval_variables())
    for i, r in logged:
        program = weights.softmax_program(run.plan)
        probs = weights.probabilities(run.state.apply_fn, run.seeds.take(variables, i), images, program,
                                      run.config.eval_batch_size)  # fmt: skip
        evaluate.write_run_report(probs, images, labels, r.report.log, r.report.say)


def finish(run: Run, opts: Options, epoch_times: list[float], compile_s: float, watch: RecompileWatch) -> list[Result]:
    """Reports, each seed's run record (metrics.json), the recompilation count; the checkpointer closed."""
    if opts.report:
        write_reports(run)
    records = [r.report.finish(epoch_times, compile_s=compile_s, recompiles=watch.after_first) for r in run.seed_runs]
    if watch.after_first is not None:
        runlog.Report(opts.out).say(f"recompilations after the first epoch: {watch.after_first}")
    if run.ckpt:
        run.ckpt.close()
    return [Result(state=run.seeds.take(run.state, i), record=record) for i, record in enumerate(records)]


def completed_records(run: Run, opts: Options) -> list[dict] | None:
    """Each seed's record as its finished run left it in its logdir (runlog.completed_record); None if one of them
    was stopped before it wrote all of it, and so finishes again."""
    records = [runlog.completed_record(r.report.log.dir if r.report.log else None, opts.report) for r in run.seed_runs]
    return None if None in records else records


def finished(run: Run, opts: Options, records: list[dict]) -> list[Result]:
    """A resumed run that has trained all its epochs and written its records: one line, each seed's final and best
    accuracy; nothing is compiled, and its logs, report and checkpoints stay as they were."""
    say = runlog.Report(opts.out).say
    say(nothing_to_train(opts.workdir, run.config.epochs))
    run.ckpt.close()
    for r, record in zip(run.seed_runs, records):
        if record:
            r.report.say(runlog.final_line(record, r.report.log.dir))
    return [Result(state=run.seeds.take(run.state, i), record=record) for i, record in enumerate(records)]


# ---------------------------------------------------------------------------------------- the loop
def train_run(config: Config, seeds: Seeds, opts: Options, data: data_lib.Dataset | None = None,
              cache: ProgramCache | None = None) -> list[Result]:  # fmt: skip
    """Trains one seed, or vmapped seeds, evaluating after every epoch. `cache` keeps the compiled programs for
    the next run of the same shapes (by default the process's: programs.SHARED)."""
    validate(config)
    opts.placement.check_batch(config.batch_size)
    if opts.resume and not opts.workdir:
        raise UsageError("--resume needs --workdir")
    if opts.resume and opts.init is not None:
        raise cli.init_or_resume()
    check_workdir(opts.workdir)
    if opts.workdir and not opts.resume and (epoch := checkpoint.saved_epoch(opts.workdir)) is not None:
        raise cli.workdir_taken(opts.workdir, epoch)
    for d in logdirs(opts):
        if d:
            runlog.writable_dir(d)
    run = prepare(config, seeds, opts, data)
    if run.first_epoch >= run.config.epochs and (records := completed_records(run, opts)) is not None:
        return finished(run, opts, records)
    training, evals, compile_s = compile_programs(run, opts, cache or programs.SHARED)
    announce(run, opts, compile_s)
    epoch_times, watch = [], RecompileWatch(run.first_epoch)
    for epoch in range(run.first_epoch, run.config.epochs):  # the checkpoint's epochs, for a resumed run
        watch.epoch_started(epoch)
        epoch_times.append(run_epoch(run, training, evals, epoch, opts.progress))
        watch.epoch_ended(epoch)
        if opts.stop_after_epoch is not None and epoch + 1 >= opts.stop_after_epoch:
            break
    return finish(run, opts, epoch_times, compile_s, watch)


def train_and_evaluate(config: Config, *, data: data_lib.Dataset | None = None, **options) -> Result:
    """Trains `config` (its one seed), evaluating after every epoch; prints the blog's lines; returns the final
    state and the run record. Keyword arguments: `data` (else loaded) and the fields of `Options`."""
    return train_run(config, Seeds((config.seed,)), Options(**options), data)[0]


def check_workdir(workdir) -> None:
    """Refuses, before any data is loaded (a new run's workdir is made after), a --workdir that is a file or that
    holds torch_ref's checkpoint."""
    if workdir and os.path.isfile(workdir):
        raise cli.unwritable("--workdir", workdir)
    if workdir and checkpoint.holds_torch_ref_checkpoint(workdir):
        raise cli.other_trainers_workdir(workdir, "torch_ref.train")


def check_seed_layout(workdir, mode: str, seed_workdirs: list) -> None:
    """Refuses to resume several seeds in the other layout than they were checkpointed in (vmapped: together in
    WORKDIR; sequential: WORKDIR/seed<k>), which would find no checkpoint and start every seed over."""
    if mode == "vmap" and any(checkpoint.saved_epoch(w) is not None for w in seed_workdirs):
        raise UsageError(f"--workdir {workdir} holds one checkpoint per seed (seed<k>/, from seeds trained one after "
                         "another): resume them with --seed-mode sequential")  # fmt: skip
    if mode == "sequential" and checkpoint.saved_epoch(workdir) is not None:
        raise UsageError(f"--workdir {workdir} holds the seeds' checkpoint together (from vmapped seeds): resume "
                         "them with --seed-mode vmap")  # fmt: skip


def train_seeds(config: Config, seeds: tuple[int, ...], mode: str = "auto", *, data: data_lib.Dataset | None = None,
                **options) -> list[Result]:  # fmt: skip
    """Trains `config` once per seed, each run as `train_and_evaluate` trains it alone: all in one vmapped
    program, or one after another (`mode`, see `seeds.choose_seed_mode`). With several seeds, each logs to
    LOGDIR/seed<k>; vmapped seeds checkpoint together in WORKDIR, sequential ones in WORKDIR/seed<k>; a mean ± std
    line and LOGDIR/seeds.json end the run. Other keyword arguments: the fields of `Options`."""
    validate(config)
    opts = Options(**options)
    if opts.resume and not opts.workdir:
        raise UsageError("--resume needs --workdir")
    if len(seeds) == 1:
        return train_run(config.replace(seed=seeds[0]), Seeds(tuple(seeds)), opts, data)

    def per_seed(root, seed):
        return None if root is None else os.path.join(root, f"seed{seed}")

    mode, why = choose_seed_mode(mode, config, len(seeds))
    check_workdir(opts.workdir)
    if opts.resume:
        check_seed_layout(opts.workdir, mode, [per_seed(opts.workdir, s) for s in seeds])
    if opts.resume and mode == "sequential":
        config = continued_base(config, [per_seed(opts.workdir, s) for s in seeds], seeds, opts.given)
    say = runlog.Report(opts.out).say
    data = data or data_lib.load(config.dataset, opts.data_dir, progress=opts.progress)
    listed = ", ".join(map(str, seeds))
    t0 = time.perf_counter()
    if mode == "vmap":
        say(f"seeds {listed}: in one vmapped program ({why})")
        vmapped = dataclasses.replace(opts, logdir=None, logdirs=tuple(per_seed(opts.logdir, s) for s in seeds))
        results = train_run(config.replace(seed=seeds[0]), Seeds(tuple(seeds), vmapped=True), vmapped, data)
    else:
        say(f"seeds {listed}: one after another ({why})")
        cache, results = ProgramCache(), []  # compiled once, for every seed
        for seed in seeds:
            say(f"--- seed {seed}")
            alone = dataclasses.replace(opts, logdir=per_seed(opts.logdir, seed), workdir=per_seed(opts.workdir, seed))
            results += train_run(config.replace(seed=seed), Seeds((seed,)), alone, data, cache)
    summary = seeds_summary([r.record for r in results], seeds, mode, time.perf_counter() - t0)
    say(summary["line"])
    if opts.logdir:
        runlog.atomic_write(Path(opts.logdir) / "seeds.json", json.dumps(summary, indent=1).encode())
    return results
