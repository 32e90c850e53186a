"""``python -m lrtrack``: see :mod:`lrtrack.cli`."""

from lrtrack.cli import exit_without_teardown, main

if __name__ == "__main__":
    main()
    exit_without_teardown(0)
