"""`mlpersonalize rollback` and `reset`: undo an update, start over."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._options import JsonOpt, ModelOpt, NoWaitOpt, QuietOpt, VerboseOpt
from ._output import out, plural, safe_name
from .cmd_update import waiting


def register(app: typer.Typer) -> None:
    app.command("rollback")(rollback_command)
    app.command("reset")(reset_command)


def rollback_command(
    model: ModelOpt = None,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Point your personalized model back at its previous version.

    Example: mlpersonalize rollback
    """
    # lazy: store ~7 ms
    from .. import store

    out.configure(json_out, quiet, verbose)
    root = store.model_root(model)
    version = store.rollback(root, not no_wait, waiting(root))
    path = store.versions_dir(root) / version
    if out.json:
        out.record({"model": str(path), "version": version})
    else:
        out.done(f"Rolled back: version {version} at {safe_name(str(path))}")


def reset_command(
    model: ModelOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (a terminal asks first; a script never is asked).")
    ] = False,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Delete a personalized model and all its versions; predictions use the original again.

    --model takes the personalized model's name or folder, or its original package (then its
    personalized copy is reset). On a terminal you are asked first unless --yes; off a terminal
    (cron, scripts) it never asks.

    Example: mlpersonalize reset --yes
    """
    # lazy: store ~7 ms
    from .. import store

    out.configure(json_out, quiet, verbose)
    root = store.model_root(model)
    versions = store.list_versions(root)
    if versions and not yes and _interactive():
        question = (
            f"Delete the personalized model at {safe_name(str(root))} ({plural(len(versions), 'version')})?"
        )
        if not typer.confirm(question, default=False, err=True):
            raise typer.Abort()
    removed = store.reset(root, not no_wait, waiting(root))
    if out.json:
        out.record({"model": str(root), "removed_versions": removed})
    elif removed:
        out.done(f"Reset: removed {plural(len(removed), 'version')} at {safe_name(str(root))}")
    else:
        out.done(f"Nothing to reset: no personalized model at {safe_name(str(root))}")


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()
