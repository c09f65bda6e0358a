"""Files written whole or not at all, without the rest of the library (and without torch), so
that any module may use it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import BinaryIO, Callable

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                     folder: str | os.PathLike | None = None) -> None:
    """Run ``write(file)`` on a temporary file beside ``path`` (or in ``folder``, which must be
    on the same file system), sync it, rename it to ``path``.

    Readers see the old file or the complete new one, never a part; if ``write`` fails (or the
    process is interrupted) the temporary file is removed and ``path`` is left as it was. The
    file gets the permissions any new file gets (``0o666`` less the umask), as ``open`` gives;
    a file that is replaced keeps its own.

    Raises:
        OSError: the disk (or quota) filled up while writing: ``errno.ENOSPC``, with a message
            that names ``path`` and says that the file there is kept as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) if folder is None else os.fspath(folder)
    fd, tmp = _new_file(folder, os.path.splitext(path)[1])
    try:
        if os.path.exists(path):  # a file locked down by its owner stays so
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _out_of_space(err):
            kept = "the file there is kept as it was" if os.path.exists(path) else "nothing written"
            raise OSError(errno.ENOSPC, f"no space left on the device writing {path} ({kept})",
                          path) from None
        raise


def _new_file(folder: str, suffix: str) -> tuple[int, str]:
    """Create ``folder/.tmp-XXXXXXXX<suffix>`` exclusively, with the umask's permissions (what
    ``tempfile.mkstemp`` gives, ``0o600``, would hide the file from the user's group)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                           0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {folder}")


def _out_of_space(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it came from is the disk (or quota) being full: a
    library writing through its own buffers (``torch.save``) may report it as another error
    whose context holds the ``OSError``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False
