"""One package exception for user errors, and atomic file writing.

A ``GhostedgeError`` means "the user can fix this": the CLI prints its message on one line
(what failed, then what to do) and exits with ``exit_code`` without a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

#: exit code for bad input or usage
EXIT_USAGE = 2
#: exit code for a check that ran and failed (e.g. an accuracy gate)
EXIT_CHECK = 1


class GhostedgeError(Exception):
    """A user-facing failure: bad input, missing dependency, unmet requirement."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


class CheckFailed(GhostedgeError):
    """A check that ran to the end and did not pass (exit code 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_CHECK)


class SettingError(GhostedgeError):
    """A setting's value cannot work. The message names settings as ``{field}`` placeholders (the settings
    dataclass's field names): ``str()`` shows the field names, a front end its own names for them
    (``render``), so the library never names a command-line flag."""

    _FIELD = re.compile(r"\{([a-z][a-z0-9_]*)\}")

    def __init__(self, setting: str, message: str, exit_code: int = EXIT_USAGE):
        self.setting = setting
        self.template = message
        super().__init__(self.render(lambda name: name), exit_code)

    def render(self, name_of: Callable[[str], str]) -> str:
        return self._FIELD.sub(lambda m: name_of(m.group(1)), self.template)

    def renamed(self, names: dict[str, str]) -> SettingError:
        """The same error for a caller whose settings call these fields otherwise (old -> new)."""
        return SettingError(names.get(self.setting, self.setting),
                            self.render(lambda n: "{" + names.get(n, n) + "}"), self.exit_code)


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only if the block succeeds.

    A failure (or Ctrl-C) removes the temporary file, so ``dst`` is never partial: it keeps its
    previous content or stays absent.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)
    return Path(dst)


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(dst, text.encode("utf-8"))
