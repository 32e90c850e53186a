"""``python -m lrtrack``: see :mod:`lrtrack.app.cli`."""

import os
import signal


def _stopped_while_starting(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C while the imports run, before :mod:`lrtrack.app.guard` installs its own
    handler: nothing has started and nothing is lost; exit 130 as a stopped job does."""
    os.write(2, b"lrtrack: error: interrupted while starting; nothing was started\n")
    os._exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stopped_while_starting)  # the imports below take most of a second
    signal.signal(signal.SIGINT, _stopped_while_starting)

from lrtrack.app.cli import job_started, main  # noqa: E402 - after the handlers above
from lrtrack.app.guard import exit_without_teardown  # noqa: E402

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # a signal before Hydra's app took over (composing the command line)
        os.write(2, b"lrtrack: error: interrupted while starting; nothing was started\n" if not job_started()
                 else b"lrtrack: error: interrupted\n")
        exit_without_teardown(130)
    except SystemExit as stop:  # an error line or an interruption was printed: end as fast as a success
        if isinstance(stop.code, int):
            exit_without_teardown(stop.code)
        raise
    exit_without_teardown(0)
