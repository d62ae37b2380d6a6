"""Headless Chromium for the tests and the benchmarks, driven by Playwright.

Playwright (the Python package, whose wheel carries its node driver) drives the *system*
Chromium (``scripts/bootstrap.sh`` installs it: ``/usr/bin/chromium`` on Debian,
``/usr/bin/chromium-browser`` on Fedora; ``$GATING_CHROMIUM`` overrides) through
``executable_path``: ``playwright install`` is never run and no browser is downloaded
(``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1`` is set here too, in case).

::

    from tests.support.browser import artifacts_dir, browser_page, chromium_path

    if chromium_path() is None:
        pytest.skip(NO_CHROMIUM)
    with browser_page(artifacts_dir(), "gate-page") as page:
        page.goto(site.url + "#/gate")
        page.locator("[data-testid=gate-page]").wait_for()

Each page runs in a fresh, empty profile (a temporary user data directory), headless,
and reaches 127.0.0.1 only: every request to another host is aborted (and logged to the
console file), no host name resolves, everything but loopback goes to a dead proxy, and
Chromium's own background traffic is switched off. When the ``with``
block ends (also on an error) the page's screenshot ``NAME.png`` and its console messages
and page errors ``NAME.console.txt`` are written to the artifacts directory.

**Logging in to Buildbot.** Buildbot's login is ``GET {url}auth/login`` answered with an
HTTP authentication challenge (``UserPasswordAuth`` and ``HTPasswdAuth`` offer Digest and
Basic; ``CustomAuth`` Basic only); with good credentials it stores the user in the
session cookie (``TWISTED_SESSION``) and redirects to ``{buildbot-url}#/``. What works in
Playwright (each checked against a real Buildbot 4.3 master by
``tests/test_browser_support.py``):

* :func:`buildbot_login` (what to use): a ``GET auth/login`` through the page's own
  request context (``page.request``) with a pre-emptive ``Authorization: Basic`` header.
  That context shares the browser context's cookie jar, so the session cookie it gets
  back logs the page in; the credentials are sent once and only to that URL.
* ``browser_page(..., http_credentials=(user, password))`` (Playwright's
  ``http_credentials``): Chromium answers the 401 challenge of ``page.goto(url +
  "auth/login")`` itself. Also works, but the credentials then stay on the context and
  answer any later challenge.
* ``page.goto("http://user:pw@127.0.0.1:PORT/auth/login")``: also works (Chromium answers
  the challenge of that navigation with the URL's credentials; the page then lands on
  ``{url}#/`` without them in its URL).

``page.request`` is Playwright's own HTTP client (it shares the cookies, not the request
filter): give it loopback URLs only.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parents[2]

# Never let Playwright fetch a browser of its own: the system Chromium is used.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

NO_CHROMIUM = (
    "no Chromium installed (looked for $GATING_CHROMIUM, "
    + ", ".join(CHROMIUM_CANDIDATES)
    + "): scripts/bootstrap.sh installs it"
)

ALLOWED_HOSTS = frozenset({"127.0.0.1"})

# The discard port: nothing listens there.
CLOSED_PORT = 9

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces with the request filter (and what keeps the page on loopback without
    # it): no host name resolves, and every request goes to a proxy on a closed loopback
    # port, except those to loopback addresses, which Chromium never proxies. (Playwright's
    # own ``proxy`` option would proxy loopback too: hence a plain argument.)
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    f"--proxy-server=http://127.0.0.1:{CLOSED_PORT}",
]

DEFAULT_VIEWPORT = {"width": 1280, "height": 900}


def chromium_path() -> str | None:
    """The Chromium to drive: ``$GATING_CHROMIUM`` if set (None if that is not an
    executable file), else ``/usr/bin/chromium`` (Debian) or ``/usr/bin/chromium-browser``
    (Fedora); None when there is none."""
    override = os.environ.get("GATING_CHROMIUM")
    candidates: tuple[str, ...] = (override,) if override else CHROMIUM_CANDIDATES
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def artifacts_dir() -> Path:
    """Where screenshots and console logs go: ``$GATING_TEST_ARTIFACTS`` or
    ``<repo>/test-artifacts`` (created)."""
    path = Path(os.environ.get("GATING_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "page"


def _allowed(url: str, hosts: frozenset[str]) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in hosts


@contextmanager
def browser_page(
    artifacts: Path,
    name: str,
    *,
    http_credentials: tuple[str, str] | None = None,
    viewport: dict[str, int] | None = None,
    allowed_hosts: frozenset[str] = ALLOWED_HOSTS,
    filter_requests: bool = True,
    full_page: bool = True,
) -> Iterator[Page]:
    """A Playwright ``Page`` in a headless system Chromium with a new empty profile.

    Requests to any host but ``allowed_hosts`` (127.0.0.1) are aborted by a request filter
    (``page.route``), which notes them in the console file; ``filter_requests=False``
    (timings: the filter costs a round trip to Playwright per request) leaves it out, and
    only the launch arguments (no name resolves, a dead proxy for all but loopback) keep
    the page on loopback. On exit, also after an error in the block,
    ``artifacts/NAME.png`` (a screenshot of the whole page, or of the viewport with
    ``full_page=False``) and ``artifacts/NAME.console.txt`` (console messages, page
    errors, blocked and failed requests) are written. ``http_credentials=(user, password)``
    makes Chromium answer HTTP authentication challenges (see the module's docstring for
    Buildbot's login).
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError(NO_CHROMIUM)
    artifacts.mkdir(parents=True, exist_ok=True)
    stem = _safe_name(name)
    log: list[str] = []
    start = time.monotonic()

    def note(kind: str, text: str) -> None:
        log.append(f"{time.monotonic() - start:8.3f}s {kind}: {text}")

    profile = tempfile.mkdtemp(prefix="gating-chromium-")
    try:
        with sync_playwright() as pw:
            options: dict[str, Any] = {
                "executable_path": executable,
                "headless": True,
                "args": LAUNCH_ARGS,
                "viewport": viewport or DEFAULT_VIEWPORT,
            }
            if http_credentials is not None:
                user, password = http_credentials
                options["http_credentials"] = {"username": user, "password": password}
            context = pw.chromium.launch_persistent_context(profile, **options)
            try:

                def route(r: Any) -> None:
                    if _allowed(r.request.url, allowed_hosts):
                        r.continue_()
                    else:
                        note("blocked", r.request.url)
                        r.abort("blockedbyclient")

                def route_ws(ws: Any) -> None:
                    if _allowed(ws.url, allowed_hosts):
                        ws.connect_to_server()
                    else:
                        note("blocked", ws.url)
                        ws.close()

                if filter_requests:
                    context.route("**/*", route)
                    if hasattr(context, "route_web_socket"):
                        context.route_web_socket("**/*", route_ws)
                page = context.pages[0] if context.pages else context.new_page()
                page.on("console", lambda m: note(f"console.{m.type}", m.text))
                page.on("pageerror", lambda e: note("pageerror", str(e)))
                page.on("requestfailed", lambda r: note("requestfailed", r.url))
                try:
                    yield page
                finally:
                    try:
                        page.screenshot(path=str(artifacts / f"{stem}.png"), full_page=full_page)
                    except Exception as exc:  # never hide the block's own error
                        note("screenshot failed", repr(exc))
                    (artifacts / f"{stem}.console.txt").write_text(
                        "\n".join(log) + ("\n" if log else "")
                    )
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def buildbot_login(page: Page, url: str, user: str, password: str) -> None:
    """Log the page in to the Buildbot at ``url`` (ending in ``/``) with HTTP basic auth:
    ``GET {url}auth/login`` through ``page.request`` (it shares the browser context's
    cookies) with an ``Authorization: Basic`` header; Buildbot answers with its session
    cookie and a redirect. Raises ``RuntimeError`` if Buildbot refused the credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    resp = page.request.get(
        url + "auth/login",
        headers={"Authorization": f"Basic {token}"},
        max_redirects=0,
    )
    if resp.status not in (200, 301, 302, 303):
        raise RuntimeError(f"Buildbot login as {user!r} failed: HTTP {resp.status} {resp.text()}")
    logged_in = buildbot_user(page, url)
    if logged_in != user:
        raise RuntimeError(f"Buildbot login as {user!r} did not take: the session is {logged_in!r}")


def buildbot_user(page: Page, url: str) -> str | None:
    """Who the page's session is logged in to Buildbot as (``GET {url}config``'s ``user``:
    None when anonymous)."""
    resp = page.request.get(url + "config")
    if not resp.ok:
        raise RuntimeError(f"GET {url}config: HTTP {resp.status}")
    return resp.json().get("user", {}).get("username")
