#!/usr/bin/env bash
# Make this machine ready to run the gating master, its tests and its demo.
# Idempotent: a second run only checks and returns in a second or so.
#
#   scripts/bootstrap.sh            # system packages + .venv + pip install -e .[test]
#   PYTHON=python3.12 scripts/bootstrap.sh
set -euo pipefail

# --- System packages --------------------------------------------------------
# Add new requirements to BOTH lists (Debian/Ubuntu name, Fedora name).
# Notes: rpmbuild comes from "rpm" on Debian and "rpm-build" on Fedora;
# libkrb5-dev / krb5-devel are needed to build gssapi (koji -> requests-gssapi).
# rabbitmq-server: the tests start private brokers of their own (tests/support/rabbitmq.py);
# the package's system service is not used, and is not started by the install (see below).
# postgresql / postgresql-server: idem, private clusters (tests/support/postgres.py) for the
# multi-master tests; production masters use a real server (ansible/).
# chromium: the headless browser of the web UI tests and benchmarks (tests/support/browser.py),
# driven by Playwright through its executable_path: /usr/bin/chromium on Debian,
# /usr/bin/chromium-browser on Fedora. Playwright never downloads a browser of its own.
DEBIAN_PACKAGES=(
    git
    rpm
    createrepo-c
    dnf
    libkrb5-dev
    gcc
    python3-dev
    python3-venv
    curl
    cpio
    rabbitmq-server
    postgresql
    chromium
)
FEDORA_PACKAGES=(
    git
    rpm-build
    createrepo_c
    dnf
    krb5-devel
    gcc
    python3-devel
    curl
    cpio
    rabbitmq-server
    postgresql-server
    chromium
)

# crossbar (the WAMP router of multi-master Buildbot) in a virtualenv of its own: it pulls
# in ~100 packages (web3, numpy, ...) and pins idna==2.5, which the master's must not get;
# its bjdata wheel is built against NumPy 1.
CROSSBAR_PACKAGES=("crossbar==26.10.1" "numpy<2")

# Where the chromium package puts the browser (Debian, Fedora); $GATING_CHROMIUM overrides.
CHROMIUM_PATHS=(/usr/bin/chromium /usr/bin/chromium-browser)

MIN_PYTHON=(3 11)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"
# pip install playwright (the test extra) must never fetch a browser: the system one is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

detect_family() {
    local id="" id_like=""
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        id="$(. /etc/os-release && echo "${ID:-}")"
        # shellcheck disable=SC1091
        id_like="$(. /etc/os-release && echo "${ID_LIKE:-}")"
    fi
    case " $id $id_like " in
        *" debian "* | *" ubuntu "*) echo debian; return ;;
        *" fedora "* | *" rhel "* | *" centos "*) echo fedora; return ;;
    esac
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
        echo debian
    elif command -v dnf >/dev/null 2>&1 && command -v rpm >/dev/null 2>&1; then
        echo fedora
    else
        echo unknown
    fi
}

# Prefix for commands that need root: nothing when root, sudo otherwise.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root and sudo not found)"
    fi
}

# apt-get install without starting the packages' services (rabbitmq-server's would start
# a broker, or fail the install where no init system runs): a policy-rc.d that denies every
# start, unless the machine has one already, removed afterwards.
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d placed="" rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# placed by gating bootstrap.sh for one apt-get install\nexit 101\n' \
            | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        placed=1
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT  # also when interrupted
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || rc=$?
    if [[ -n "$placed" ]]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    return "$rc"
}

system_packages() {
    local family missing=() pkg
    family="$(detect_family)"
    case "$family" in
        debian)
            for pkg in "${DEBIAN_PACKAGES[@]}"; do
                dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
            done
            if ((${#missing[@]})); then
                log "installing system packages: ${missing[*]}"
                as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
                apt_install_no_start "${missing[@]}"
            fi
            ;;
        fedora)
            for pkg in "${FEDORA_PACKAGES[@]}"; do
                # --whatprovides so that e.g. dnf5's "Provides: dnf" counts.
                rpm -q --whatprovides "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
            done
            if ((${#missing[@]})); then
                log "installing system packages: ${missing[*]}"
                as_root dnf install -y -q "${missing[@]}"
            fi
            ;;
        *)
            die "unsupported system (need Debian/Ubuntu with apt-get or Fedora with dnf)"
            ;;
    esac
    chromium_ok || die "chromium is installed but not executable at ${GATING_CHROMIUM:-${CHROMIUM_PATHS[*]}} (set GATING_CHROMIUM)"
    log "system packages ok ($family)"
}

# True when the browser of the web UI tests is there (see DEBIAN_PACKAGES).
chromium_ok() {
    local path
    if [[ -n "${GATING_CHROMIUM:-}" ]]; then
        [[ -x "$GATING_CHROMIUM" ]]
        return
    fi
    for path in "${CHROMIUM_PATHS[@]}"; do
        [[ -x "$path" ]] && return 0
    done
    return 1
}

# True when "$1" runs and is at least MIN_PYTHON.
python_ok() {
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PYTHON[0]}, ${MIN_PYTHON[1]}) else 1)" \
        >/dev/null 2>&1
}

virtualenv() {
    local want="${MIN_PYTHON[0]}.${MIN_PYTHON[1]}"
    if [[ -e "$VENV" ]] && ! python_ok "$VENV/bin/python"; then
        log "existing $VENV is broken or older than Python $want: recreating it"
        rm -rf "$VENV"
    fi
    if [[ ! -e "$VENV" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 \
            || die "Python interpreter '$PYTHON' not found (set PYTHON=/path/to/python$want or newer)"
        if ! python_ok "$PYTHON"; then
            die "Python >= $want required, but '$PYTHON' is $("$PYTHON" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))' 2>/dev/null || echo unknown) (set PYTHON=/path/to/python$want or newer)"
        fi
        "$PYTHON" -m venv "$VENV" || die "could not create $VENV with '$PYTHON'"
    fi
    log "virtualenv ok ($("$VENV/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))') at $VENV)"
}

python_packages() {
    local sum stamp
    sum="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    stamp="$VENV/.installed-$sum"
    if [[ -e "$stamp" ]]; then
        log "python packages ok (up to date)"
        return
    fi
    log "installing python packages (pip install -e .[test])"
    rm -f "$VENV"/.installed-*
    "$VENV/bin/pip" install --quiet --no-input --disable-pip-version-check \
        -e "$REPO[test]" || die "pip install -e '$REPO[test]' failed"
    touch "$stamp"
    log "python packages ok"
}

crossbar_virtualenv() {
    local cbvenv="$REPO/.venv-crossbar" sum stamp
    sum="$(printf '%s\n' "${CROSSBAR_PACKAGES[@]}" | sha256sum | cut -d' ' -f1)"
    stamp="$cbvenv/.installed-$sum"
    if [[ -e "$stamp" && -x "$cbvenv/bin/crossbar" ]]; then
        log "crossbar ok (up to date)"
        return
    fi
    log "installing crossbar into $cbvenv"
    rm -rf "$cbvenv"
    "$VENV/bin/python" -m venv "$cbvenv" || die "could not create $cbvenv"
    "$cbvenv/bin/pip" install --quiet --no-input --disable-pip-version-check \
        "${CROSSBAR_PACKAGES[@]}" || die "pip install ${CROSSBAR_PACKAGES[*]} failed"
    "$cbvenv/bin/crossbar" version >/dev/null 2>&1 || die "$cbvenv/bin/crossbar does not run"
    touch "$stamp"
    log "crossbar ok"
}

system_packages
virtualenv
python_packages
crossbar_virtualenv
