"""How every command of the project treats bad input: one line on stderr, exit 2, never a traceback.

    def main(argv=None) -> int:
        return cli.run(lambda: _main(argv), user_errors=(DataError,))

`ArgumentParser` turns argparse's own errors (unknown flag, bad type) into `UsageError`, so they read like
every other usage error instead of a usage dump; `run` maps UsageError (and the command's `user_errors`) to
exit 2, a `RunError` (a run that cannot go on: divergence, no intact checkpoint) to exit 1, Ctrl-C to exit 130
and SIGTERM (a scheduler's pre-emption, once `stop_on_sigterm` is called) to exit 143, with an optional hint
(`Interrupted`). `deferred_signals` keeps both out of a block that must not be cut (a checkpoint save).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import itertools
import math
import os
import signal
import sys
import threading
from collections.abc import Callable


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def unwritable(flag: str, directory, e: OSError | None = None) -> UsageError:
    """The one line for a directory a command cannot write to (`e`: what creating or probing it raised; None for
    a file)."""
    why = "it is a file, not a directory" if e is None or os.path.isfile(directory) else e.strerror
    return UsageError(f"cannot write to {flag} {directory}: {why}")


class RunError(Exception):
    """A run that cannot go on (it diverged, no intact checkpoint is left): one line, exit code 1."""


def workdir_taken(workdir, epoch: int | None = None) -> UsageError:
    """The one line for a new run pointed at a --workdir that holds another run's checkpoint: saving into it would
    overwrite that run (or, with orbax, be skipped below its newest epoch), so the user chooses."""
    held = f"the checkpoint of a run (epoch {epoch})" if epoch is not None else "the checkpoint of a run"
    return UsageError(f"--workdir {workdir} holds {held}: --resume continues it; another --workdir starts a new run")


def default_logdir(name: str, root: str | os.PathLike = "runs") -> str:
    """ROOT/<name>, or ROOT/<name>-2, -3, ...: the first that holds no run's records (metrics.json, or several
    seeds' seeds.json and seed<k>/metrics.json), so that a run without --logdir never replaces an earlier run's
    logs (a resumed run's record comes from its checkpoint)."""
    records = ("metrics.json", "seeds.json", os.path.join("seed*", "metrics.json"))
    candidates = (os.path.join(root, name if k == 1 else f"{name}-{k}") for k in itertools.count(1))
    return next(d for d in candidates if not any(glob.glob(os.path.join(glob.escape(d), r)) for r in records))


def other_trainers_workdir(workdir, trainer: str) -> UsageError:
    """The one line for a --workdir that holds the other trainer's checkpoint (jaxmnist's or torch_ref's): neither
    resumes the other's, and a run of its own beside it would leave two runs' checkpoints in one directory."""
    return UsageError(f"--workdir {workdir} holds a checkpoint of python -m {trainer}, which this trainer can neither "
                      "resume nor share: choose another --workdir")  # fmt: skip


class Diverged(Exception):
    """The loss or the state stopped being finite in epoch `epoch` (from 0), at step `step` of it (from 1);
    `seed` says which of vmapped seeds did (None for one seed alone). Both trainers raise it."""

    def __init__(self, epoch: int, step: int, loss: float, seed: int | None = None):
        what = f"loss {loss}" if not math.isfinite(loss) else f"loss {loss:.3g}, then non-finite parameters"
        who = "" if seed is None else f"seed {seed}: "
        super().__init__(f"{who}training diverged in epoch {epoch + 1} at step {step} ({what})")
        self.epoch, self.step, self.seed = epoch, step, seed


def diverged(e: Diverged, workdir, last_epoch: int | None) -> RunError:
    """The one line a divergence ends a run with, in both trainers: where it diverged, the last good checkpoint
    (`last_epoch` in `workdir`; None or 0 for none yet) and what to try."""
    if workdir and last_epoch:
        where = (
            f"the last good checkpoint is epoch {last_epoch} in {workdir}: "
            f"continue from it with --resume --workdir {workdir} and a lower --lr"
        )
    elif workdir:
        where = f"no epoch was checkpointed yet in {workdir}; start again with a lower --lr"
    else:
        where = "no checkpoint was kept (--workdir keeps one per epoch); start again with a lower --lr"
    return RunError(f"{e}; {where}")


def init_or_resume() -> UsageError:
    """Both trainers: --torch-state-dict starts a new run from its weights, --resume continues a checkpoint's."""
    return UsageError("--torch-state-dict starts a new run from its weights, --resume continues the checkpoint's: "
                      "give one")  # fmt: skip


class Terminated(BaseException):
    """SIGTERM arrived (after `stop_on_sigterm`): the command stops as on Ctrl-C. A BaseException like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it (socketserver's did: the server went on)."""


class Interrupted(Exception):
    """A Ctrl-C or SIGTERM the command caught to add a hint (e.g. how to resume): printed after 'interrupted; '
    or 'terminated; '."""

    def __init__(self, hint: str, terminated: bool = False):
        super().__init__(hint)
        self.terminated = terminated


@contextlib.contextmanager
def resume_hint(workdir):
    """A Ctrl-C or SIGTERM inside, in a run that checkpoints into `workdir`, ends it with how to continue it."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as e:
        if not workdir:
            raise
        hint = f"continue with --resume --workdir {workdir}"
        raise Interrupted(hint, terminated=isinstance(e, Terminated)) from None


_deferral = {"active": False, "pending": None}


def _on_sigterm(signum, frame):
    if _deferral["active"]:
        _deferral["pending"] = _deferral["pending"] or Terminated
    else:
        raise Terminated


def stop_on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread, so a pre-empted run stops like a Ctrl-C'd one."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def stop_once_on_signals() -> None:
    """The first Ctrl-C or SIGTERM stops the command (KeyboardInterrupt or Terminated in the main thread); any later
    one changes nothing, so a second Ctrl-C cannot cut the shutdown short. For a command whose stop is its normal
    end (a server): a training run keeps `stop_on_sigterm`, whose Ctrl-C during a checkpoint save waits for it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_once)


def _stop_once(signum, frame) -> None:
    # Ignored from inside the handler, before it raises: ignoring them in the `except` that catches the first left
    # a window in which a second signal (5 sent 20 ms apart, by tests/test_serve.py) raised again after the server
    # had printed "stopped", and it exited 143.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def deferred_signals():
    """Ctrl-C and SIGTERM wait until the block is done (then raise as usual): a checkpoint is written whole."""

    def on_sigint(signum, frame):
        _deferral["pending"] = _deferral["pending"] or KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    _deferral.update(active=True, pending=None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        pending = _deferral["pending"]
        _deferral.update(active=False, pending=None)
        if pending is not None:
            raise pending


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError: one line, exit 2, like every other usage error."""

    def error(self, message):
        raise UsageError(message)


def script_parser(prog: str, doc: str) -> ArgumentParser:
    """A script's parser: its docstring's first paragraph is the description (a sentence may wrap), the rest (usage
    examples) the epilog."""
    first, _, rest = doc.partition("\n\n")
    return ArgumentParser(
        prog=prog, description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's, but a flag whose help already says its default, that has none (None: the preset's, the
    model's...) or that is a switch (off unless given) keeps its own words: not "(default: the preset's) (default:
    None)", nor "(default: False)"."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def run(body: Callable[[], int | None], *, user_errors: tuple[type[Exception], ...] = ()) -> int:
    """Runs a command's body; returns its exit code (0 when it returns None)."""
    try:
        return body() or 0
    except (UsageError, *user_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"{'terminated' if e.terminated else 'interrupted'}; {e}", file=sys.stderr)
        return 143 if e.terminated else 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
