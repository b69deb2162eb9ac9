"""jaxmnist.cli: every command's errors are one line and an exit code, never a traceback."""

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
