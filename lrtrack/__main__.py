"""``python -m lrtrack``: see :mod:`lrtrack.cli`."""

from lrtrack.cli import main

if __name__ == "__main__":
    main()
