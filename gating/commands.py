"""The commands a job instance runs on a worker, as argv lists (pure logic).

Only the job's own scripts (``run-before``, ``run``, ``run-after``) are shell text, and
they go to ``bash`` as one argument. Everything else from a pipeline file (package
names, glob patterns, paths) is passed as separate arguments, never spliced into shell
text, so no value from a file or a change can be read as shell syntax.
"""

from __future__ import annotations

from gating.pipeline import SNAP_CHANNEL_RE, SNAP_NAME_RE, Job, Snap, package_error

OUTPUT_STAGING = ".gating-output"
OUTPUT_TARBALL = ".gating-output.tar"
INPUT_TARBALL = ".gating-input.tar"

# lpci plugins this gate runs, and the run command each one stands for (as lpci does).
PLUGIN_RUN = {
    "tox": "python3 -m pip install tox==3.24.5; tox",
    "pyproject-build": "python3 -m pip install build==0.7.0; python3 -m build",
}

# Collect the files matching each glob argument into the staging folder, keeping their
# relative paths. The patterns are positional arguments, expanded unquoted with an empty
# IFS: that is pathname expansion only, with no word splitting and no evaluation of the
# pattern as shell code, and file names (even with newlines) stay whole. Matches that are
# '.' or go through '..' (older bash matches them for '.*') and the staging folder itself
# are never collected.
_COLLECT = r"""set -eu
shopt -s globstar nullglob
dest=$1; shift
rm -rf -- "$dest"; mkdir -p -- "$dest/files"
IFS=
for pattern in "$@"; do
    for path in $pattern; do
        case /$path/ in
            */../* | */./ | "/$dest/"* | "/./$dest/"*) continue ;;
        esac
        if [[ -e $path || -L $path ]]; then
            cp -a --parents -- "$path" "$dest/files/"
        fi
    done
done
"""


def script_command(script: str) -> list[str]:
    """Run a job's shell script the way lpci does: bash, no profile, exit on error."""
    return ["bash", "--noprofile", "--norc", "-ec", script]


def run_script(job: Job) -> str | None:
    """The job's ``run``, or the command its plugin stands for."""
    if job.plugin in PLUGIN_RUN:
        return PLUGIN_RUN[job.plugin]
    return job.run


def environment(job: Job) -> dict[str, str]:
    """The job's environment; a null value means 'pass the worker's own through'."""
    return {k: v for k, v in job.environment if v is not None}


def package_command(install: tuple[str, ...], packages: tuple[str, ...]) -> list[str]:
    """The pool's install command and the package names. Raises ``ValueError`` for a name
    the command would read as an option (the pipeline loader refuses those already)."""
    for package in packages:
        error = package_error(package)
        if error:
            raise ValueError(f"{package!r} {error}")
    return [*install, *packages]


def snap_command(snap: Snap) -> list[str]:
    """``snap install``; raises ``ValueError`` for a name or channel that is not one (the
    pipeline loader refuses those already): snap would read ``--name`` as an option."""
    if not SNAP_NAME_RE.match(snap.name) or not SNAP_CHANNEL_RE.match(snap.channel):
        raise ValueError(f"bad snap {snap.name!r} (channel {snap.channel!r})")
    cmd = ["snap", "install", snap.name, f"--channel={snap.channel}"]
    if snap.classic:
        cmd.append("--classic")
    return cmd


def collect_output_command(patterns: tuple[str, ...]) -> list[str]:
    return [
        "bash",
        "--noprofile",
        "--norc",
        "-c",
        _COLLECT,
        "collect-output",
        OUTPUT_STAGING,
        *patterns,
    ]


def pack_output_command() -> list[str]:
    return ["tar", "-cf", OUTPUT_TARBALL, "-C", OUTPUT_STAGING, "."]


def unpack_input_command(target_directory: str) -> list[str]:
    return ["tar", "-xf", INPUT_TARBALL, "-C", target_directory]


def artifact_path(run: int, pipeline: str, job: str, index: int, lane: str) -> str:
    """Where the master keeps a job instance's output, relative to the master's basedir."""
    if not isinstance(run, int) or isinstance(run, bool) or run < 0:
        raise ValueError(f"bad pipeline run id {run!r}")
    return f"artifacts/{run}/{pipeline}/{job}/{index}/{lane}/output.tar"
