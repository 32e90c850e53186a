"""``python -m lrtrack.deliver <spool>``: deliver what a job left undelivered (see :mod:`lrtrack.tracking.deliver`)."""

from lrtrack.tracking.deliver import main

if __name__ == "__main__":
    raise SystemExit(main())
