"""The ``ghostedge`` command line: options -> settings -> library call -> render.

User errors (``GhostedgeError``) print one line on stderr and exit non-zero; ``--debug`` shows the
traceback instead. This module assembles the commands (``commands``, ``commands_deploy``) on the app
``cli_options`` defines, and is the console-script entry point.
"""

from __future__ import annotations

import sys
import warnings

from rich.markup import escape

from . import commands  # noqa: F401  (registers the commands on `app`)
from .cli_options import app, err, flag_for, state
from .commands_deploy import deploy_app
from .errors import GhostedgeError, SettingError

__all__ = ["app", "flag_for", "run"]

app.add_typer(deploy_app, name="deploy")


def _warn_to_stderr(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


def run() -> None:
    """Console-script entry point: turns package errors into one line and an exit code."""
    warnings.showwarning = _warn_to_stderr
    try:
        app()  # standalone: usage errors print their message and exit 2
    except GhostedgeError as e:
        if state["debug"]:
            raise
        msg = e.render(flag_for) if isinstance(e, SettingError) else str(e)   # the library names settings
        err.print(f"[red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: outputs already written are complete; nothing partial was left")
        sys.exit(130)
    except Exception as e:
        if state["debug"]:
            raise
        err.print(f"[red]error:[/] unexpected {type(e).__name__}: {escape(str(e))} (rerun with --debug for the "
                  "traceback and report it)", highlight=False, soft_wrap=True)
        sys.exit(1)
