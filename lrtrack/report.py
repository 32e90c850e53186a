"""``python -m lrtrack.report``: the HTML report of a sweep or experiment (see :mod:`lrtrack.app.report`)."""

from lrtrack.app.report import main

if __name__ == "__main__":
    raise SystemExit(main())
