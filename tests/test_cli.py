"""jaxmnist.cli: every command's errors are one line and an exit code, never a traceback."""

import os
import signal
import time

import pytest

from jaxmnist import cli


class Broken(Exception):
    pass


def raising(exc):
    def body():
        raise exc

    return body


@pytest.mark.parametrize(
    "body, code, err",
    [
        (lambda: None, 0, ""),
        (lambda: 3, 3, ""),
        (raising(cli.UsageError("--lr must be > 0")), 2, "error: --lr must be > 0\n"),
        (raising(Broken("no data here")), 2, "error: no data here\n"),
        (raising(KeyboardInterrupt()), 130, "interrupted\n"),
        (raising(cli.Interrupted("continue with --resume")), 130, "interrupted; continue with --resume\n"),
    ],
)
def test_run_maps_outcomes_to_exit_codes(body, code, err, capsys):
    assert cli.run(body, user_errors=(Broken,)) == code
    assert capsys.readouterr().err == err


def test_other_exceptions_are_not_swallowed():
    with pytest.raises(ValueError):  # a bug stays a bug: its traceback is what a developer needs
        cli.run(raising(ValueError("bug")))


def test_argparse_errors_become_one_line(capsys):
    parser = cli.ArgumentParser(prog="prog")
    parser.add_argument("--n", type=int)
    assert cli.run(lambda: parser.parse_args(["--n", "x"]) and None) == 2
    assert cli.run(lambda: parser.parse_args(["--m"]) and None) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: argument --n: invalid int value: 'x'", "error: unrecognized arguments: --m"]


def test_run_error_exits_1_and_sigterm_143(capsys):
    assert cli.run(raising(cli.RunError("training diverged"))) == 1
    assert cli.run(raising(cli.Terminated())) == 143
    assert cli.run(raising(cli.Interrupted("continue with --resume", terminated=True))) == 143
    assert capsys.readouterr().err.splitlines() == [
        "error: training diverged",
        "terminated",
        "terminated; continue with --resume",
    ]


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, cli.Terminated)])
def test_signals_wait_for_a_deferred_block(signum, raised):
    cli.stop_on_sigterm()
    previous_term = signal.getsignal(signal.SIGTERM)
    # Python's own Ctrl-C handler, whatever this worker process was left with (a CI run once found SIGINT not
    # raising here, outside the block, after other tests in the same pytest-xdist worker).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(raised):
            with cli.deferred_signals():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # the signal is handled here, inside the block: it must wait
                done.append("block finished")
        assert done == ["block finished"]
        with pytest.raises(raised):  # outside a deferred block it stops the command at once
            os.kill(os.getpid(), signum)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_int)
    assert previous_term is not signal.SIG_DFL


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, cli.Terminated)])
def test_a_stop_once_command_stops_on_the_first_signal_and_ignores_the_next(signum, raised):
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cli.stop_once_on_signals()
        with pytest.raises(raised):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or SIGTERM, e.g. while a server shuts down
            os.kill(os.getpid(), sig)
        time.sleep(0.05)  # raising here would fail the test
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in previous)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_resume_hint_names_the_workdir_only_where_there_is_one(capsys):
    def stopped(workdir, exc):
        def body():
            with cli.resume_hint(workdir):
                raise exc

        return body

    assert cli.run(stopped("ckpt/w", cli.Terminated())) == 143
    assert capsys.readouterr().err == "terminated; continue with --resume --workdir ckpt/w\n"
    assert cli.run(stopped("ckpt/w", KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted; continue with --resume --workdir ckpt/w\n"
    assert cli.run(stopped(None, KeyboardInterrupt())) == 130
    assert "continue" not in capsys.readouterr().err


def test_a_scripts_description_is_its_docstrings_first_paragraph():
    """A first sentence that wraps onto a second line stays whole in --help (it was cut after its first line, the
    rest printed at the top of the examples)."""
    p = cli.script_parser("prog", "Where a model fails: accuracy, the misclassified\ndigits.\n\n    prog --x 1  # one\n")
    assert p.description == "Where a model fails: accuracy, the misclassified\ndigits."
    assert p.epilog == "    prog --x 1  # one\n"


def test_help_adds_a_default_only_where_the_text_names_none():
    p = cli.ArgumentParser(prog="prog", formatter_class=cli.DefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    p.add_argument("--out", help="where")
    p.add_argument("--workers", type=int, default=0, help="worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    text = " ".join(p.format_help().split())
    assert "epochs (default: the preset's) --out" in text and "where --workers" in text, text
    assert "worker processes (default: 0)" in text and "None" not in text and "False" not in text


def test_a_default_logdir_never_replaces_an_earlier_runs_logs(tmp_path):
    """runs/<preset> until it holds a run's records (one run's, or several seeds'), then runs/<preset>-2, ...; a
    folder without any (a run refused before it wrote one) is used again."""
    assert cli.default_logdir("cnn_tb", tmp_path) == str(tmp_path / "cnn_tb")
    (tmp_path / "cnn_tb").mkdir()
    assert cli.default_logdir("cnn_tb", tmp_path) == str(tmp_path / "cnn_tb")
    (tmp_path / "cnn_tb" / "metrics.json").write_text("{}")
    assert cli.default_logdir("cnn_tb", tmp_path) == str(tmp_path / "cnn_tb-2")
    (tmp_path / "cnn_tb-2" / "seed3").mkdir(parents=True)  # seeds stopped before their summary: seed3's record
    (tmp_path / "cnn_tb-2" / "seed3" / "metrics.json").write_text("{}")
    assert cli.default_logdir("cnn_tb", tmp_path) == str(tmp_path / "cnn_tb-3")
