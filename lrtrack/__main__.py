"""``python -m lrtrack``: see :mod:`lrtrack.app.cli`."""

from lrtrack.app.cli import exit_without_teardown, main

if __name__ == "__main__":
    try:
        main()
    except SystemExit as stop:  # an error line or an interruption was printed: end as fast as a success
        if isinstance(stop.code, int):
            exit_without_teardown(stop.code)
        raise
    exit_without_teardown(0)
