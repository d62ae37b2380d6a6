"""Compose trees for tests, written with productmd's own classes, and a loopback HTTP server.

* :func:`write_compose` makes ``<root>/<compose_id>/`` with ``STATUS``,
  ``metadata/composeinfo.json`` (``productmd.composeinfo.ComposeInfo``),
  ``metadata/images.json`` (``productmd.images.Images``) and a small dummy file per image;
* :func:`set_status` writes (or removes, ``None``) the ``STATUS`` of a compose;
* :class:`ComposeServer` serves a directory over HTTP on 127.0.0.1 (a threaded
  ``http.server``, symlinks followed), with :meth:`ComposeServer.fail` to answer one path with an
  HTTP error.

An image is a mapping ``{"variant", "type", "arch"}`` with optional ``"subvariant"`` (default:
the variant), ``"format"`` (default: the first productmd format of the type, ``iso`` if none),
``"path"`` (default: ``<variant>/<arch>/images/<subvariant>-<type>-<arch>-<compose_id>.<format>``,
so the same image has a different path in each compose), ``"bootable"`` (default False) and
``"content"`` (bytes of the dummy file).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import productmd.composeinfo
import productmd.images

__all__ = ["ComposeServer", "image", "set_status", "write_compose"]

_ID = re.compile(
    r"^(?P<short>[^-]+)-(?P<version>.+?)-(?P<date>\d{8})(?:\.(?P<suffix>[a-z]+))?\.(?P<respin>\d+)$"
)
_SUFFIX_TYPES = {"n": "nightly", "t": "test", "ci": "ci", "d": "development"}


def image(variant: str, type: str, arch: str, **extra: Any) -> dict[str, Any]:
    """An image mapping for :func:`write_compose` (``extra``: subvariant, format, path...)."""
    return {"variant": variant, "type": type, "arch": arch, **extra}


def write_compose(
    root: Path,
    compose_id: str,
    images: Sequence[Mapping[str, Any]] | None = (),
    status: str | None = "FINISHED",
    *,
    composeinfo: bool = True,
) -> Path:
    """Write the compose ``compose_id`` (``Short-Version-YYYYMMDD[.n|.t|.ci|.d].R``, e.g.
    ``Fedora-Rawhide-20240101.n.0``) under ``root``; its directory is returned.

    ``status`` None writes no ``STATUS``; ``images`` None writes no ``images.json``;
    ``composeinfo=False`` writes no ``composeinfo.json`` (an old-style nightly has neither).
    """
    match = _ID.match(compose_id)
    if match is None:
        raise ValueError(f"compose id {compose_id!r} is not Short-Version-YYYYMMDD[.type].respin")
    ctype = _SUFFIX_TYPES[match["suffix"]] if match["suffix"] else "production"
    path = Path(root) / compose_id
    (path / "metadata").mkdir(parents=True, exist_ok=True)
    set_status(path, status)

    def fill(compose: Any) -> None:
        compose.id = compose_id
        compose.type = ctype
        compose.date = match["date"]
        compose.respin = int(match["respin"])

    if composeinfo:
        info = productmd.composeinfo.ComposeInfo()
        fill(info.compose)
        info.release.name = match["short"]
        info.release.short = match["short"]
        info.release.version = match["version"]
        info.release.type = "ga"
        info.dump(str(path / "metadata" / "composeinfo.json"))

    if images is not None:
        metadata = productmd.images.Images()
        fill(metadata.compose)
        for spec in images:
            metadata.add(spec["variant"], spec["arch"], _image(metadata, path, compose_id, spec))
        metadata.dump(str(path / "metadata" / "images.json"))
    return path


def _image(
    parent: productmd.images.Images, top: Path, compose_id: str, spec: Mapping[str, Any]
) -> productmd.images.Image:
    variant, itype, arch = spec["variant"], spec["type"], spec["arch"]
    subvariant = spec.get("subvariant", variant)
    formats = productmd.images.IMAGE_TYPE_FORMAT_MAPPING.get(itype) or ["iso"]
    fmt = spec.get("format", formats[0])
    relpath = spec.get("path") or (
        f"{variant}/{arch}/images/{subvariant or variant}-{itype}-{arch}-{compose_id}.{fmt}"
    )
    content = spec.get("content", f"{compose_id} {relpath}\n".encode())
    (top / relpath).parent.mkdir(parents=True, exist_ok=True)
    (top / relpath).write_bytes(content)

    img = productmd.images.Image(parent)
    img.path = relpath
    img.mtime = 0
    img.size = len(content)
    img.volume_id = None
    img.type = itype
    img.format = fmt
    img.arch = arch
    img.disc_number = 1
    img.disc_count = 1
    img.checksums = {"sha256": hashlib.sha256(content).hexdigest()}
    img.implant_md5 = None
    img.bootable = bool(spec.get("bootable", False))
    img.subvariant = subvariant
    return img


def set_status(path: Path, status: str | None) -> None:
    """Write ``status`` (and a newline) to ``<path>/STATUS``; None removes the file."""
    target = Path(path) / "STATUS"
    if status is None:
        target.unlink(missing_ok=True)
    else:
        target.write_text(status + "\n")


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _failed(self) -> bool:
        self.server.requests.append(self.path)
        code = self.server.failures.get(self.path.split("?", 1)[0])
        if code is None:
            return False
        self.send_error(code)
        return True

    def do_GET(self) -> None:
        if not self._failed():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._failed():
            super().do_HEAD()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    failures: dict[str, int]
    requests: list[str]


class ComposeServer:
    """Serve ``directory`` at ``http://127.0.0.1:<port>/`` while in a ``with`` block.

    ``url`` is the base URL (with a trailing slash), ``url_for(relpath)`` the URL of a file,
    ``requests`` the paths asked for, in order; ``fail(relpath, code)`` answers that path
    with HTTP ``code`` from then on (``fail(relpath, None)`` stops it).
    """

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_Handler, directory=str(directory))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.failures = {}
        self._server.requests = []
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="compose-server",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    def url_for(self, relpath: str | Path) -> str:
        return self.url + str(relpath).lstrip("/")

    def fail(self, relpath: str | Path, code: int | None) -> None:
        key = "/" + str(relpath).lstrip("/")
        if code is None:
            self._server.failures.pop(key, None)
        else:
            self._server.failures[key] = code

    def __enter__(self) -> ComposeServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
