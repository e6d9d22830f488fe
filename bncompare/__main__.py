"""The `bncompare` command (and `python -m bncompare`): signal handlers first, then the CLI.

The handlers go in before anything heavy is imported, so that Ctrl-C or SIGTERM at any moment of
start-up exits 130 quietly instead of printing a KeyboardInterrupt traceback or dying with 143.
"""

import sys


def main() -> None:
    """Entry point of the `bncompare` console script."""
    from bncompare import interrupts

    interrupts.install(hard_exit=True)
    code: object = 0
    try:
        from bncompare.cli import app

        app(prog_name="bncompare")
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # a second Ctrl-C outside any handler of the command's own
        code = interrupts.EXIT_INTERRUPTED
    sys.exit(interrupts.exiting(code))  # a stop request is never reported as success


if __name__ == "__main__":
    main()
