"""Fresh sqlite tracking stores made by copying an empty one instead of migrating a new file.

MLflow creates a new sqlite store by running every schema migration since its first release
(alembic): about 2 s of Python on a small CPU, paid by the first run in every new folder. The
result does not depend on where the file is, except the ``Default`` experiment's artifact
location, which MLflow writes when it finds no experiment. So the first store made on a machine
is also saved, without its experiments, as a template for this MLflow version
(``~/.cache/lrtrack/``, or ``$XDG_CACHE_HOME/lrtrack``); later fresh stores are a copy of it,
and MLflow adds their ``Default`` experiment as it would. A template that is not an empty,
migrated store is deleted and the store is made the usual way.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def template_path() -> Path | None:
    """Where this MLflow version's empty store is kept (``None``: no home folder to keep it in)."""
    from mlflow.version import VERSION

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no HOME and no password entry
        return None
    return cache / "lrtrack" / f"mlflow-{VERSION}-empty-store.db"


def copy_template(path: Path) -> bool:
    """Make the store at ``path`` (which does not exist) from the template; False when there is
    none, or it is not a migrated store (it is then deleted: the caller lets MLflow make one)."""
    template = template_path()
    if template is None or not template.is_file():
        return False
    if not _is_empty_store(template):
        log.warning("the cached empty tracking store %s is not one; it is deleted", template)
        template.unlink(missing_ok=True)
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def _is_empty_store(db: Path) -> bool:
    """An sqlite file with MLflow's tables, a schema version, and no experiment."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            (experiments,) = conn.execute("SELECT count(*) FROM experiments").fetchone()
            conn.execute("SELECT count(*) FROM runs").fetchone()
        return len(versions) == 1 and experiments == 0
    except sqlite3.Error:
        return False


def save_template(fresh_store: Path) -> None:
    """Keep a copy of a store MLflow has just created (nothing in it but its Default experiment),
    without its experiments, as the template. Best effort: a cache that cannot be written is skipped."""
    target = template_path()
    if target is None or target.is_file():
        return
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".template-", suffix=".db")
        os.close(fd)
        shutil.copyfile(fresh_store, tmp)
        with sqlite3.connect(tmp) as db:
            (runs,) = db.execute("SELECT count(*) FROM runs").fetchone()
            if runs:  # not fresh after all
                raise OSError("the store already holds runs")
            db.execute("DELETE FROM experiment_tags")
            db.execute("DELETE FROM experiments")
        os.replace(tmp, target)
    except (OSError, sqlite3.Error) as err:
        log.debug("no store template saved (%s)", err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
