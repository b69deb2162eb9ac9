"""How every command of the project treats bad input: one line on stderr, exit 2, never a traceback.

    def main(argv=None) -> int:
        return cli.run(lambda: _main(argv), user_errors=(DataError,))

`ArgumentParser` turns argparse's own errors (unknown flag, bad type) into `UsageError`, so they read like
every other usage error instead of a usage dump; `run` maps UsageError (and the command's `user_errors`) to
exit 2 and Ctrl-C to exit 130, with an optional hint (`Interrupted`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Interrupted(Exception):
    """A Ctrl-C the command caught to add a hint (e.g. how to resume): printed after 'interrupted; '."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError: one line, exit 2, like every other usage error."""

    def error(self, message):
        raise UsageError(message)


def script_parser(prog: str, doc: str) -> ArgumentParser:
    """A script's parser: its docstring's first line is the description, the rest (usage examples) the epilog."""
    first, _, rest = doc.partition("\n")
    return ArgumentParser(
        prog=prog, description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run(body: Callable[[], int | None], *, user_errors: tuple[type[Exception], ...] = ()) -> int:
    """Runs a command's body; returns its exit code (0 when it returns None)."""
    try:
        return body() or 0
    except (UsageError, *user_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted; {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
