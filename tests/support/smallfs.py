"""A small file system mounted over a directory, to fill it up: the tests of a full disk.

A real ``tmpfs`` (``mount -t tmpfs -o size=...``): the product sees a real ``ENOSPC`` (``No
space left on device``) from the kernel, on a file system of its own (renames from another
file system fail with ``EXDEV``, as on a volume of its own in production). It needs root
(``CAP_SYS_ADMIN``); :func:`unavailable` says why not, for a skip. A user namespace
(``unshare -Urm``) would not do: the master under test is a daemon outside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FILLER = ".filler"  # hidden: the master serves the repositories' folders, never dot files


def unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CAP_SYS_ADMIN); the tests run as a user"
    probe = Path(tempfile.mkdtemp(prefix="smallfs-probe-"))
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return f"cannot mount a tmpfs here: {proc.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    finally:
        probe.rmdir()


class SmallFilesystem:
    """A tmpfs of ``size`` over ``path``, holding what ``path`` held; :meth:`fill` it,
    :meth:`free` it; :meth:`unmount` puts what it holds then back in ``path``."""

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = Path(path)
        self.size = size
        self.mounted = False

    def mount(self) -> SmallFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="smallfs-") as keep:
            saved = Path(keep) / "content"
            shutil.copytree(self.path, saved, symlinks=True)
            subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={self.size},mode=0755",
                    "tmpfs",
                    str(self.path),
                ],
                check=True,
                capture_output=True,
            )
            self.mounted = True
            shutil.copytree(saved, self.path, symlinks=True, dirs_exist_ok=True)
        return self

    def fill(self) -> int:
        """Fill the file system up (one hidden file); the bytes written."""
        written = 0
        chunk = b"\0" * 65536
        with open(self.path / FILLER, "ab", buffering=0) as out:
            while True:
                try:
                    written += out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            # The last bytes: tmpfs counts pages, a smaller write may still fit.
            for size in (4096, 512, 1):
                try:
                    while True:
                        written += out.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def free(self) -> None:
        (self.path / FILLER).unlink(missing_ok=True)

    def unmount(self) -> None:
        if not self.mounted:
            return
        self.free()
        with tempfile.TemporaryDirectory(prefix="smallfs-") as keep:
            saved = Path(keep) / "content"
            shutil.copytree(self.path, saved, symlinks=True)
            proc = subprocess.run(["umount", str(self.path)], capture_output=True)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], check=True)
            self.mounted = False
            shutil.copytree(saved, self.path, symlinks=True, dirs_exist_ok=True)
