"""``python -m lrtrack``: see :mod:`lrtrack.app.cli`."""

from lrtrack.app.cli import exit_without_teardown, main

if __name__ == "__main__":
    main()
    exit_without_teardown(0)
