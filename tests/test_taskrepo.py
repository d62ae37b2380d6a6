"""Tests of gating.taskrepo: task repositories with one runtask.yaml per task directory.

The repositories are real git repositories made in tmp_path; clones and checkouts run
this machine's git over file://, and action scripts run in bash for real.
"""

import os
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gating.diagnostics import Collector, Mark
from gating.forge import git_env
from gating.pipeline import IDENTIFIER_RE, MAX_TIMEOUT
from gating.taskrepo import (
    ACTION_KEYS,
    DEFAULT_BRANCH_RULES,
    ENV_NAME_RE,
    EVENT_TYPES,
    GIT,
    INPUT_KEYS,
    MAX_ACTIONS,
    MAX_TASKS,
    RESERVED_NAMES,
    SCHEDULING_KEYS,
    TASK_VARIABLES,
    TOP_KEYS,
    Action,
    Task,
    TaskError,
    action_script,
    branch_for_release,
    clone_commands,
    discover,
    for_event,
    head_command,
    parse_task,
    task_command,
    task_environment,
    valid_branch,
    worker_checkout_commands,
)
from gating.yamltree import MAX_FILE_BYTES
from tests.support.badinput import (
    BAD_INPUT,
    HOSTILE,
    any_text,
    assert_located,
    damaged,
    rare,
    yaml_documents,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("git") and shutil.which("bash")), reason="needs git and bash"
)

HOSTILE_NVR = "firefox-1.0-1.fc39$(touch x)`touch y`'\"\n;touch z"

SANITY = """\
desc: Checks sanity of firefox
maintainer: jdoe
input:
  args: [koji_build, arch]
environment:
  LANG: C.UTF-8
  RETRIES: 3
actions:
  - name: write the build's nvr
    shell:
      - printf '%s' "$koji_build" > nvr.out
      - printf '%s' "$LANG:$RETRIES:$item_type:$task_name" > env.out
  - shell: ./check.sh
timeout: 3600
"""

ON_TAG = """\
name: tag-check
input:
  args: koji_tag
actions:
  - shell: echo "$koji_tag"
"""

DISABLED = """\
scheduling:
  run: false
input:
  args: [koji_build]
actions:
  - shell: ["false"]
"""

BROKEN = """\
input:
  args: [koji_bild]
actions:
  - shel: ./x
timeout: soon
environment:
  LANG: C
  LANG: C.UTF-8
"""

BROKEN_MESSAGES = (
    "broken/runtask.yaml:2:10: 'input' 'args': unknown argument 'koji_bild'; "
    "did you mean 'koji_build'? (event types: koji_build, koji_tag, compose, "
    "dist_git_commit; variables: item, item_type, package, task_name, arch)",
    "broken/runtask.yaml:4:5: action 1: missing required key 'shell'",
    "broken/runtask.yaml:4:5: unknown key 'shel' in action 1; did you mean 'shell'?",
    "broken/runtask.yaml:5:10: 'timeout' (seconds): expected an integer, got a string",
    "broken/runtask.yaml:8:3: duplicate key 'LANG' (first defined at line 7, column 3)",
)

BOTH_YAML = """\
input:
  args: [compose]
actions:
  - shell: echo from-yaml
"""

YML_ONLY = """\
input:
  args: [dist_git_commit, koji_build]
actions:
  - shell: echo from-yml
"""

CHECK_SH = "#!/bin/sh\necho checked > check.out\n"


def git(*args, cwd=None) -> str:
    env = git_env(
        extra={
            "GIT_AUTHOR_NAME": "Task Author",
            "GIT_AUTHOR_EMAIL": "author@example.org",
            "GIT_COMMITTER_NAME": "Task Author",
            "GIT_COMMITTER_EMAIL": "author@example.org",
        }
    )
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def run(argv: list[str], cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=git_env(), capture_output=True, text=True)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def task_tree(root: Path) -> None:
    write(
        root,
        {
            "check_sanity/runtask.yaml": SANITY,
            "check_sanity/check.sh": CHECK_SH,
            "on_tag/runtask.yaml": ON_TAG,
            "disabled/runtask.yaml": DISABLED,
            "broken/runtask.yaml": BROKEN,
            "both/runtask.yaml": BOTH_YAML,
            "both/runtask.yml": "this: [is not read",
            "yml_only/runtask.yml": YML_ONLY,
            "docs/README": "not a task\n",
            ".hidden/runtask.yaml": "not: [read",
            "README.md": "tasks of firefox\n",
        },
    )
    (root / "check_sanity" / "check.sh").chmod(0o755)


@pytest.fixture
def task_repo(tmp_path) -> Path:
    """A bare task repository with branches 'main' and 'f39'; f39 holds the tasks."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    write(work, {"README.md": "main branch\n"})
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "main", cwd=work)
    git("checkout", "-q", "-b", "f39", cwd=work)
    task_tree(work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "tasks", cwd=work)
    bare = tmp_path / "tasks.git"
    git("clone", "-q", "--bare", "--", str(work), str(bare))
    return bare


def clone(url: str, branch: str, dest: Path) -> str:
    for argv in clone_commands(url, branch, str(dest)):
        proc = run(argv)
        assert proc.returncode == 0, proc.stderr
    return run(head_command(str(dest))).stdout.strip()


# -- discovery -------------------------------------------------------------------------


def test_discover_reads_every_task_directory_in_order(tmp_path):
    task_tree(tmp_path)
    tasks, errors = discover(tmp_path)
    assert [(t.name, t.file) for t in tasks] == [
        ("both", "both/runtask.yaml"),
        ("check_sanity", "check_sanity/runtask.yaml"),
        ("disabled", "disabled/runtask.yaml"),
        ("tag-check", "on_tag/runtask.yaml"),
        ("yml_only", "yml_only/runtask.yml"),
    ]
    assert tasks[1] == Task(
        name="check_sanity",
        directory="check_sanity",
        file="check_sanity/runtask.yaml",
        description="Checks sanity of firefox",
        maintainer="jdoe",
        run=True,
        args=("koji_build", "arch"),
        environment=(("LANG", "C.UTF-8"), ("RETRIES", "3")),
        actions=(
            Action(
                "write the build's nvr",
                (
                    "printf '%s' \"$koji_build\" > nvr.out",
                    "printf '%s' \"$LANG:$RETRIES:$item_type:$task_name\" > env.out",
                ),
            ),
            Action(None, ("./check.sh",)),
        ),
        timeout=3600,
    )
    assert tasks[1].mark == Mark("check_sanity/runtask.yaml", 1, 1)
    assert tasks[1].actions[1].mark == Mark("check_sanity/runtask.yaml", 13, 5)
    assert tasks[1].events == ("koji_build",)
    assert tasks[3].mark == Mark("on_tag/runtask.yaml", 1, 7)  # its 'name'
    assert tasks[3].args == ("koji_tag",)
    assert tasks[2].run is False
    assert errors == [TaskError("broken", "broken/runtask.yaml", BROKEN_MESSAGES)]


def test_runtask_yaml_is_preferred_to_runtask_yml_without_a_message(tmp_path):
    task_tree(tmp_path)
    tasks, errors = discover(tmp_path)
    both = next(t for t in tasks if t.directory == "both")
    assert both.file == "both/runtask.yaml"
    assert both.actions == (Action(None, ("echo from-yaml",)),)
    assert [e.directory for e in errors] == ["broken"]


def test_a_broken_task_error_prints_one_line_per_problem():
    error = TaskError("broken", "broken/runtask.yaml", BROKEN_MESSAGES)
    assert str(error) == "\n".join(BROKEN_MESSAGES)


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        (
            "",
            ["tt/runtask.yaml:1:1: empty task file: expected a mapping with 'input' and 'actions'"],
        ),
        (
            "[a]",
            ["tt/runtask.yaml:1:1: the task file: expected a mapping, got a list"],
        ),
        (
            "desc: x\n",
            [
                "tt/runtask.yaml:1:1: the task file: missing required key 'actions'",
                "tt/runtask.yaml:1:1: the task file: missing required key 'input'",
            ],
        ),
        (
            "input: {args: [arch]}\nactions: []\n",
            [
                "tt/runtask.yaml:1:15: 'input' 'args': expected at least one event type "
                "(koji_build, koji_tag, compose, dist_git_commit)",
                "tt/runtask.yaml:2:10: 'actions': expected at least one action",
            ],
        ),
        (
            "input: {args: [koji_tag, koji_tag]}\nactions: [{shell: []}]\n",
            [
                "tt/runtask.yaml:1:26: 'input' 'args': 'koji_tag' is listed twice",
                "tt/runtask.yaml:2:19: action 1 'shell': expected at least one command",
            ],
        ),
        (
            "name: Bad Name\nscheduling: {run: maybe}\ninput: {args: [compose]}\n"
            "actions: [{shell: ''}]\nenvironment: {1X: a, item: b, OK: [c]}\ntimeout: 9999999\n",
            [
                "tt/runtask.yaml:1:7: task name 'Bad Name' must be at least two characters: "
                "lower-case ASCII letters, digits, '+', '.', '_' or '-', starting with a "
                "letter or digit",
                "tt/runtask.yaml:2:19: 'scheduling' 'run': expected true or false, got a string",
                "tt/runtask.yaml:4:19: action 1 'shell': empty command",
                "tt/runtask.yaml:5:15: 'environment': '1X' is not a valid variable name (ASCII "
                "letters, digits and '_', not starting with a digit)",
                "tt/runtask.yaml:5:22: 'environment': 'item' is set by the gate for every task",
                "tt/runtask.yaml:5:35: 'environment' 'OK': expected a string, got a list",
                "tt/runtask.yaml:6:10: 'timeout': at most 604800 seconds, got 9999999",
            ],
        ),
        (
            'input: {args: [koji_build]}\nactions: [{shell: "a\\0b"}]\nscheduling: {rn: false}\n',
            [
                "tt/runtask.yaml:2:19: action 1 'shell': must not contain a NUL character",
                "tt/runtask.yaml:3:14: unknown key 'rn' in 'scheduling'; did you mean 'run'?",
            ],
        ),
        (
            "input: !!python/object/apply:os.system [ls]\nactions: [{shell: x}]\n",
            [
                "tt/runtask.yaml:1:8: 'input': expected a mapping, got nothing (null)",
                "tt/runtask.yaml:1:8: bad value: could not determine a constructor for the "
                "tag 'tag:yaml.org,2002:python/object/apply:os.system'",
            ],
        ),
    ],
)
def test_broken_runtask_yaml_reports_every_problem_with_its_place(tmp_path, text, messages):
    write(tmp_path, {"tt/runtask.yaml": text})
    tasks, errors = discover(tmp_path)
    assert tasks == []
    assert errors == [TaskError("tt", "tt/runtask.yaml", tuple(messages))]


def test_directory_name_must_make_a_task_name_unless_name_is_set(tmp_path):
    ok = "input: {args: [koji_build]}\nactions: [{shell: x}]\n"
    write(tmp_path, {"Upper/runtask.yaml": ok, "Named/runtask.yaml": "name: named\n" + ok})
    tasks, errors = discover(tmp_path)
    assert [(t.name, t.directory) for t in tasks] == [("named", "Named")]
    assert errors == [
        TaskError(
            "Upper",
            "Upper/runtask.yaml",
            (
                "Upper/runtask.yaml:1:1: task name 'Upper' (from the directory name) must be "
                "at least two characters: lower-case ASCII letters, digits, '+', '.', '_' or "
                "'-', starting with a letter or digit; set 'name' to choose another",
            ),
        )
    ]


def test_two_tasks_with_the_same_name_keep_the_first(tmp_path):
    ok = "name: same\ninput: {args: [koji_build]}\nactions: [{shell: x}]\n"
    write(tmp_path, {"aa/runtask.yaml": ok, "bb/runtask.yml": ok})
    tasks, errors = discover(tmp_path)
    assert [t.directory for t in tasks] == ["aa"]
    assert errors == [
        TaskError(
            "bb",
            "bb/runtask.yml",
            ("bb/runtask.yml:1:7: task name 'same' is already used by aa/runtask.yaml",),
        )
    ]


# -- untrusted repositories --------------------------------------------------------------


def test_symbolic_links_to_outside_the_repository_are_refused(tmp_path):
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    ok = "input: {args: [koji_build]}\nactions: [{shell: x}]\n"
    write(outside, {"runtask.yaml": ok, "secret/runtask.yaml": ok})
    write(repo, {"real/runtask.yaml": ok})
    (repo / "leaky").mkdir()
    (repo / "leaky" / "runtask.yaml").symlink_to(outside / "runtask.yaml")
    (repo / "away").symlink_to(outside / "secret")
    (repo / "inside").symlink_to("real")  # a directory link inside the repo is fine
    (repo / "shared").mkdir()
    (repo / "shared" / "runtask.yaml").symlink_to("../real/runtask.yaml")
    (repo / "dangling").mkdir()
    (repo / "dangling" / "runtask.yaml").symlink_to("../nowhere.yaml")
    (repo / "fifo").mkdir()
    os.mkfifo(repo / "fifo" / "runtask.yaml")
    tasks, errors = discover(repo)
    assert [t.directory for t in tasks] == ["inside", "real", "shared"]
    assert errors == [
        TaskError(
            "away",
            "away",
            ("away:1:1: task directory is a symbolic link to outside the repository",),
        ),
        TaskError(
            "dangling",
            "dangling/runtask.yaml",
            ("dangling/runtask.yaml:1:1: runtask.yaml is a broken symbolic link",),
        ),
        TaskError(
            "fifo",
            "fifo/runtask.yaml",
            ("fifo/runtask.yaml:1:1: runtask.yaml is not a regular file",),
        ),
        TaskError(
            "leaky",
            "leaky/runtask.yaml",
            ("leaky/runtask.yaml:1:1: runtask.yaml is a symbolic link to outside the repository",),
        ),
    ]


def test_at_most_100_tasks_are_loaded(tmp_path):
    ok = "input: {args: [koji_build]}\nactions: [{shell: x}]\n"
    write(tmp_path, {f"t{n:03}/runtask.yaml": ok for n in range(MAX_TASKS + 2)})
    tasks, errors = discover(tmp_path)
    assert len(tasks) == 100
    assert tasks[-1].name == "t099"
    assert errors == [
        TaskError(
            f"t{n}",
            f"t{n}/runtask.yaml",
            (
                f"t{n}/runtask.yaml:1:1: too many tasks in the repository (102; at most 100): "
                f"this one is not loaded",
            ),
        )
        for n in (100, 101)
    ]


def test_at_most_50_actions(tmp_path):
    actions = "".join(f"  - shell: echo {n}\n" for n in range(MAX_ACTIONS + 1))
    write(tmp_path, {"t1/runtask.yaml": f"input: {{args: [koji_build]}}\nactions:\n{actions}"})
    _, errors = discover(tmp_path)
    assert errors[0].messages == (
        "t1/runtask.yaml:3:3: 'actions': too many actions (51; at most 50)",
    )
    fifty = "".join(f"  - shell: echo {n}\n" for n in range(MAX_ACTIONS))
    write(tmp_path, {"t1/runtask.yaml": f"input: {{args: [koji_build]}}\nactions:\n{fifty}"})
    tasks, errors = discover(tmp_path)
    assert (errors, len(tasks[0].actions)) == ([], 50)


def test_a_file_over_the_size_limit_is_not_read(tmp_path):
    size = MAX_FILE_BYTES + 1
    write(tmp_path, {"big/runtask.yaml": "#" * size})
    _, errors = discover(tmp_path)
    assert errors == [
        TaskError(
            "big",
            "big/runtask.yaml",
            (f"big/runtask.yaml:1:1: file is too large ({size} bytes; the limit is 1048576)",),
        )
    ]


# -- scheduling --------------------------------------------------------------------------


def test_for_event_skips_disabled_tasks_and_other_events(tmp_path):
    task_tree(tmp_path)
    tasks, _ = discover(tmp_path)
    assert [t.name for t in for_event(tasks, "koji_build")] == ["check_sanity", "yml_only"]
    assert [t.name for t in for_event(tasks, "koji_tag")] == ["tag-check"]
    assert [t.name for t in for_event(tasks, "compose")] == ["both"]
    assert [t.name for t in for_event(tasks, "dist_git_commit")] == ["yml_only"]
    with pytest.raises(ValueError, match="unknown event type 'koji_buid'; did you mean"):
        for_event(tasks, "koji_buid")
    with pytest.raises(ValueError, match="unknown event type 'arch'"):
        for_event(tasks, "arch")


@pytest.mark.parametrize(
    ("release", "branch"),
    [
        ("1.fc39", "f39"),
        ("0.3.rc1.fc40", "f40"),
        ("1.fc39.1", "f39"),
        ("1.el9", "epel9"),
        ("2.el8_6", "epel8"),
        ("1.el7", "epel7"),
        ("1.el9.next", "epel9-next"),
        ("1.el10_0", "epel10.0"),
        ("3.el10_1", "epel10.1"),
        ("1.el6", "el6"),
        ("1", "main"),
        ("1.mga9", "main"),
        ("1.elfoo", "main"),
    ],
)
def test_branch_for_release_with_the_default_rules(release, branch):
    assert branch_for_release(release) == branch


def test_branch_rules_are_tried_in_order_and_default_can_be_none():
    rules = ((r"\.fc42(?![0-9])", "rawhide"), *DEFAULT_BRANCH_RULES)
    assert branch_for_release("1.fc42", rules) == "rawhide"
    assert branch_for_release("1.fc41", rules) == "f41"
    assert branch_for_release("1.mga9", rules, default=None) is None
    assert branch_for_release("1.mga9", ((r"\.mga(\d+)", r"mageia/\1"),)) == "mageia/9"
    with pytest.raises(ValueError, match=r"gives '-x' for release '1.x'"):
        branch_for_release("1.x", ((r"\.(x)", r"-\1"),))
    with pytest.raises(ValueError, match="not a valid branch name"):
        branch_for_release("1.fc39 x", ((r"\.(fc.*)", r"\1"),))


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("f39", True),
        ("epel10.0", True),
        ("feature/x", True),
        ("", False),
        ("-f", False),
        ("a..b", False),
        ("a b", False),
        ("a.lock", False),
        ("x/.hidden", False),
        ("a@{1}", False),
        ("a\nb", False),
        ("@", False),
    ],
)
def test_valid_branch(name, ok):
    assert valid_branch(name) is ok


# -- environment and scripts -------------------------------------------------------------


def sanity_task(tmp_path) -> Task:
    task_tree(tmp_path)
    tasks, _ = discover(tmp_path)
    return next(t for t in tasks if t.name == "check_sanity")


def test_task_environment_puts_event_values_in_variables(tmp_path):
    task = sanity_task(tmp_path)
    env = task_environment(
        task, "koji_build", {"item": HOSTILE_NVR, "package": "firefox", "arch": "x86_64"}
    )
    assert env == {
        "LANG": "C.UTF-8",
        "RETRIES": "3",
        "item": HOSTILE_NVR,
        "koji_build": HOSTILE_NVR,
        "item_type": "koji_build",
        "task_name": "check_sanity",
        "package": "firefox",
        "arch": "x86_64",
    }
    assert task_environment(task, "koji_build", {"koji_build": "a-1-1"}) == {
        "LANG": "C.UTF-8",
        "RETRIES": "3",
        "item": "a-1-1",
        "koji_build": "a-1-1",
        "item_type": "koji_build",
        "task_name": "check_sanity",
    }


def test_event_values_override_the_task_environment():
    task = Task("t1", "t1", "t1/runtask.yaml", args=("koji_tag",), environment=(("LANG", "C"),))
    env = task_environment(task, "koji_tag", {"item": "f39-updates", "LANG": "C.UTF-8"})
    assert env["LANG"] == "C.UTF-8"
    assert env["koji_tag"] == "f39-updates"


@pytest.mark.parametrize(
    ("event", "values", "message"),
    [
        ("koji_tag", {"item": "t"}, "task 'check_sanity' does not run on 'koji_tag' events"),
        ("koji_build", {"package": "p"}, "no value for the event's item"),
        ("koji_build", {"item": "a", "koji_build": "b"}, "'koji_build' is 'b'"),
        ("koji_build", {"item": "a", "item_type": "compose"}, "'item_type' is 'compose'"),
        ("koji_build", {"item": "a", "koji_tag": "t"}, "values for other event types: koji_tag"),
        ("koji_build", {"item": "a", "$(touch x)": "v"}, "not a valid environment variable"),
        ("koji_build", {"item": "a", "A-B": "v"}, "not a valid environment variable"),
        ("koji_build", {"item": "a\0b"}, "expected a string without NUL"),
    ],
)
def test_task_environment_refuses_bad_values(tmp_path, event, values, message):
    task = sanity_task(tmp_path)
    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("(", r"\(")):
        task_environment(task, event, values)


def test_action_script_runs_the_actions_in_order_with_quoted_names():
    task = Task(
        "t1",
        "t1",
        "t1/runtask.yaml",
        args=("koji_build",),
        actions=(
            Action("it's $(first)\nline", ("echo one", "echo two")),
            Action(None, ("echo three",)),
        ),
    )
    assert action_script(task) == textwrap.dedent(
        """\
        set -eu
        printf '%s\\n' '==> action 1/2: it'"'"'s $(first)
        line'
        echo one
        echo two
        printf '%s\\n' '==> action 2/2'
        echo three
        """
    )
    assert task_command(task) == ["bash", "--noprofile", "--norc", "-ec", action_script(task)]
    proc = subprocess.run(task_command(task), capture_output=True, text=True, check=True)
    assert proc.stdout == "==> action 1/2: it's $(first)\nline\none\ntwo\n==> action 2/2\nthree\n"


def test_a_hostile_nvr_is_only_ever_an_environment_value(tmp_path):
    task = sanity_task(tmp_path)
    script = action_script(task)
    env = task_environment(task, "koji_build", {"item": HOSTILE_NVR, "arch": "x86_64"})
    assert HOSTILE_NVR not in script and "touch" not in script
    workdir = tmp_path / task.directory
    proc = subprocess.run(
        task_command(task),
        cwd=workdir,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "nvr.out").read_text() == HOSTILE_NVR
    assert (workdir / "env.out").read_text() == "C.UTF-8:3:koji_build:check_sanity"
    assert (workdir / "check.out").read_text() == "checked\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name in ("x", "y", "z")) == []
    assert proc.stdout == "==> action 1/2: write the build's nvr\n==> action 2/2\n"


def test_the_script_stops_at_the_first_failure_and_on_unset_variables():
    def outcome(*commands: str) -> tuple[int, str]:
        task = Task("t1", "t1", "f", args=("compose",), actions=(Action("a", commands),))
        proc = subprocess.run(task_command(task), capture_output=True, text=True)
        return proc.returncode, proc.stdout

    assert outcome("false", "echo after") == (1, "==> action 1/1: a\n")
    assert outcome('echo "$koji_build"', "echo after")[0] != 0


# -- git ---------------------------------------------------------------------------------


def test_clone_and_checkout_commands_are_argv_lists():
    url = "https://src.example.org/tasks/firefox.git"
    assert clone_commands(url, "f39", "tasks") == [
        [*GIT, "clone", "-q", "--depth", "1", "--single-branch", "--no-tags"]
        + ["--branch", "f39", "--", url, "tasks"]
    ]
    assert GIT == (
        "git",
        "-c",
        "protocol.ext.allow=never",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "protocol.version=2",
    )
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert worker_checkout_commands(url, commit, "tasks") == [
        [*GIT, "init", "-q", "--template=", "--", "tasks"],
        [*GIT, "-C", "tasks", "fetch", "-q", "--no-tags", "--depth", "1", "--", url, commit],
        [*GIT, "-C", "tasks", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach"]
        + ["FETCH_HEAD", "--"],
    ]
    assert head_command("tasks") == [*GIT, "-C", "tasks", "rev-parse", "--verify", "HEAD^{commit}"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: clone_commands("u", "-b", "d"), "bad branch name '-b'"),
        (lambda: clone_commands("u", "a b", "d"), "bad branch name 'a b'"),
        (lambda: clone_commands("--upload-pack=x", "main", "d"), "bad repository URL"),
        (lambda: clone_commands("u\nv", "main", "d"), "bad repository URL"),
        (lambda: clone_commands("u", "main", ""), "bad destination"),
        (lambda: worker_checkout_commands("u", "HEAD", "d"), "expected a full commit id"),
        (lambda: worker_checkout_commands("u", "0123abc", "d"), "expected a full commit id"),
        (lambda: worker_checkout_commands("u", "A" * 40, "d"), "expected a full commit id"),
        # regression: COMMIT_RE ended in '$', which also matches before a final newline
        (lambda: worker_checkout_commands("u", "a" * 40 + "\n", "d"), "expected a full commit"),
        (lambda: worker_checkout_commands("-u", "a" * 40, "d"), "bad repository URL"),
        # regression: valid_branch took 'HEAD', which git check-ref-format --branch refuses
        (lambda: clone_commands("u", "HEAD", "d"), "bad branch name 'HEAD'"),
        (lambda: clone_commands("u", "--upload-pack=x", "d"), "bad branch name"),
        (lambda: clone_commands("u", "a\nb", "d"), "bad branch name"),
        (lambda: clone_commands("u", "caf\udce9", "d"), "bad branch name"),
        (lambda: clone_commands("u", "main", "a\0b"), "bad destination"),
    ],
)
def test_bad_git_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_shell_syntax_in_git_arguments_stays_one_argument_each():
    branch = "x$(touch${IFS}pwned)`id`;y|z"
    url = "file:///srv/$(touch pwned)/`id`;x.git"
    dest = "-d; $(touch pwned)"
    assert clone_commands(url, branch, dest) == [
        [*GIT, "clone", "-q", "--depth", "1", "--single-branch", "--no-tags"]
        + ["--branch", branch, "--", url, dest]
    ]
    long = "x" * 100_000
    assert clone_commands(url, long, dest)[0][-5:] == ["--branch", long, "--", url, dest]
    commit = "0123456789abcdef" * 4
    assert worker_checkout_commands(url, commit, dest)[:2] == [
        [*GIT, "init", "-q", "--template=", "--", dest],
        [*GIT, "-C", dest, "fetch", "-q", "--no-tags", "--depth", "1", "--", url, commit],
    ]


@pytest.mark.parametrize("name", [n for n in HOSTILE if not valid_branch(n)])
def test_hostile_branch_names_are_not_branches(name):
    with pytest.raises(ValueError, match="bad branch name"):
        clone_commands("u", name, "d")


def test_master_shallow_clones_the_branch_and_discovers_its_tasks(task_repo, tmp_path):
    url = task_repo.as_uri()
    dest = tmp_path / "master-clone"
    head = clone(url, "f39", dest)
    assert head == git("rev-parse", "f39", cwd=task_repo)
    assert git("rev-parse", "--is-shallow-repository", cwd=dest) == "true"
    assert git("rev-list", "--count", "HEAD", cwd=dest) == "1"
    remote_refs = git("for-each-ref", "--format=%(refname)", "refs/remotes", "refs/tags", cwd=dest)
    assert remote_refs == "refs/remotes/origin/HEAD\nrefs/remotes/origin/f39"
    tasks, errors = discover(dest)
    assert [t.name for t in for_event(tasks, "koji_build")] == ["check_sanity", "yml_only"]
    assert errors == [TaskError("broken", "broken/runtask.yaml", BROKEN_MESSAGES)]
    # the main branch has no tasks; a missing branch fails the clone
    clone(url, "main", tmp_path / "main-clone")
    assert discover(tmp_path / "main-clone") == ([], [])
    proc = run(clone_commands(url, "f99", str(tmp_path / "none"))[0])
    assert proc.returncode == 128
    assert "Remote branch f99 not found" in proc.stderr


def test_worker_fetches_the_masters_commit_even_after_the_branch_moved(task_repo, tmp_path):
    url = task_repo.as_uri()
    head = clone(url, "f39", tmp_path / "master-clone")
    # the branch moves on after the master read it
    work = tmp_path / "work"
    git("checkout", "-q", "f39", cwd=work)
    write(work, {"check_sanity/runtask.yaml": "changed: [later\n"})
    git("commit", "-q", "-am", "later", cwd=work)
    git("push", "-q", "--", str(task_repo), "f39", cwd=work)
    assert git("rev-parse", "f39", cwd=task_repo) != head

    dest = tmp_path / "worker"
    for argv in worker_checkout_commands(url, head, str(dest)):
        proc = run(argv)
        assert proc.returncode == 0, proc.stderr
    assert git("rev-parse", "HEAD", cwd=dest) == head
    assert git("rev-parse", "--is-shallow-repository", cwd=dest) == "true"
    assert git("rev-list", "--count", "HEAD", cwd=dest) == "1"
    assert git("status", "--porcelain", cwd=dest) == ""
    assert not (dest / ".git" / "hooks").exists()
    tasks, _ = discover(dest)
    assert next(t for t in tasks if t.name == "check_sanity").timeout == 3600


def test_fetching_by_commit_id_needs_protocol_v2(task_repo, tmp_path):
    """Why GIT pins protocol v2: v0 refuses an id no ref advertises, unless the server sets
    uploadpack.allowReachableSHA1InWant."""
    url = task_repo.as_uri()
    old = git("rev-parse", "f39", cwd=task_repo)
    new = git("commit-tree", "-p", "f39", "-m", "later", "f39^{tree}", cwd=task_repo)
    git("update-ref", "refs/heads/f39", new, cwd=task_repo)  # no ref names 'old' any more
    init, fetch, _ = worker_checkout_commands(url, old, str(tmp_path / "w"))
    assert run(init).returncode == 0
    v0 = [arg if arg != "protocol.version=2" else "protocol.version=0" for arg in fetch]
    proc = run(v0)
    assert proc.returncode != 0
    assert "not allow request for unadvertised object" in proc.stderr
    assert run(fetch).returncode == 0
    assert git("rev-parse", "FETCH_HEAD", cwd=tmp_path / "w") == old


# -- bad input: property-based ---------------------------------------------------------

_ARGS = (*EVENT_TYPES, *TASK_VARIABLES)
_WORDS = (*_ARGS, "check_sanity", "LANG", "C.UTF-8", "./check.sh", "jdoe")
_KEYS = tuple(sorted(TOP_KEYS | SCHEDULING_KEYS | INPUT_KEYS | ACTION_KEYS))
_shell = st.one_of(
    st.sampled_from(['./check.sh "$koji_build"', "make check", "rpmlint *.rpm"]),
    st.sampled_from(HOSTILE[:12]),
)


@st.composite
def _task_document(draw):
    """A runtask.yaml that is mostly valid; damaged() makes some values wrong afterwards."""
    args = draw(st.lists(st.sampled_from(_ARGS), min_size=1, max_size=4, unique=True))
    if not any(a in EVENT_TYPES for a in args) and not rare(draw, 5):
        args.append(draw(st.sampled_from(EVENT_TYPES)))
    doc: dict = {"input": {"args": args if len(args) > 1 or draw(st.booleans()) else args[0]}}
    actions = []
    for _ in range(draw(st.integers(1, 3))):
        commands = draw(st.lists(_shell, min_size=1, max_size=3))
        action: dict = {"shell": commands if len(commands) > 1 else commands[0]}
        if draw(st.booleans()):
            action["name"] = draw(st.one_of(st.sampled_from(["run it", "it's $(x)"]), _shell))
        actions.append(action)
    doc["actions"] = actions
    optional = {
        "name": st.sampled_from(["check-sanity", "rpmdeplint", "Bad Name"]),
        "desc": st.text(max_size=20),
        "maintainer": st.sampled_from(["jdoe", "Jane <j@example.org>"]),
        "scheduling": st.fixed_dictionaries({"run": st.booleans()}),
        "environment": st.dictionaries(
            st.sampled_from(["LANG", "RETRIES", "X_1", "item", "1X"]),
            st.one_of(st.sampled_from(["C.UTF-8", "$(x)"]), st.integers(0, 9)),
            max_size=3,
        ),
        "timeout": st.integers(1, MAX_TIMEOUT),
    }
    for key, strategy in optional.items():
        if rare(draw, 3):
            doc[key] = draw(strategy)
    return doc


TASK_DOCUMENTS = damaged(_task_document(), _WORDS, _KEYS)


def check_task(text):
    errors = Collector()
    task = parse_task(text, "check_sanity", "check_sanity/runtask.yaml", errors)
    assert_located(errors, "check_sanity/runtask.yaml", text)
    if task is None:
        assert errors.diagnostics, "no task and no error"
        event("errors")
        return
    assert not errors.diagnostics
    event("valid task")
    assert IDENTIFIER_RE.match(task.name)
    assert task.events and task.actions
    assert all(ENV_NAME_RE.match(k) and k not in RESERVED_NAMES for k, _ in task.environment)
    assert task.timeout is None or 1 <= task.timeout <= MAX_TIMEOUT
    for action in task.actions:
        assert action.shell and all(c.strip() and "\0" not in c for c in action.shell)
    argv = task_command(task)
    assert argv[:4] == ["bash", "--noprofile", "--norc", "-ec"] and len(argv) == 5
    # the script is the formula's commands in order, each action's title quoted; no event
    # value is ever in it
    lines = ["set -eu"]
    for number, action in enumerate(task.actions, start=1):
        title = f"==> action {number}/{len(task.actions)}" + (
            f": {action.name}" if action.name else ""
        )
        lines += [f"printf '%s\\n' {shlex.quote(title)}", *action.shell]
    assert action_script(task) == "\n".join(lines) + "\n"


@BAD_INPUT
@given(any_text())
def test_any_text_or_bytes_gives_a_task_or_errors_with_their_place(text):
    check_task(text)


@BAD_INPUT
@given(yaml_documents(TASK_DOCUMENTS))
def test_any_runtask_shaped_file_gives_a_task_or_errors_with_their_place(text):
    check_task(text)
