"""gating.compose: reading compose locations, compose states, the check report, the CLI."""

from __future__ import annotations

import calendar
import json
import os

import koji
import pytest

from gating import cli
from gating.compose import (
    Compose,
    ComposeError,
    Expected,
    FailedJob,
    Image,
    Report,
    check,
    compose_label,
    nightly_task_query,
    parse_expected,
    read_location,
    render_text,
    state,
    subject,
    tasks_for_compose,
)
from tests.support.composes import ComposeServer, image, set_status, write_compose

OLD = "Fedora-Rawhide-20240101.n.0"
NEW = "Fedora-Rawhide-20240102.n.0"

OLD_IMAGES = [
    image("Workstation", "live", "x86_64"),
    image("Server", "dvd", "x86_64"),
    image("Server", "dvd", "aarch64"),
    image("Everything", "netinst", "x86_64"),
]
NEW_IMAGES = [
    image("Workstation", "live", "x86_64"),
    image("Server", "dvd", "x86_64"),
    image("Everything", "netinst", "x86_64"),
    image("Spins", "live", "x86_64", subvariant="KDE"),
    image("Cloud", "qcow2", "x86_64", subvariant="Cloud_Base"),
]


def keys(images):
    return [i.key for i in images]


@pytest.fixture
def tree(tmp_path):
    """Two composes, and a latest-Fedora-Rawhide symlink to the newest."""
    write_compose(tmp_path, OLD, OLD_IMAGES, "FINISHED")
    write_compose(tmp_path, NEW, NEW_IMAGES, "FINISHED_INCOMPLETE")
    os.symlink(NEW, tmp_path / "latest-Fedora-Rawhide")
    return tmp_path


# --- states ----------------------------------------------------------------------------------

T = koji.TASK_STATES


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("FINISHED", "finished"),
        ("FINISHED_INCOMPLETE", "finished-incomplete"),
        ("DOOMED", "doomed"),
        ("STARTED", "pending"),
        ("TERMINATED", "pending"),
        ("", "pending"),
        ("FINISHED\n", "finished"),
    ],
)
def test_state_from_status_ignores_tasks(status, expected):
    assert state(status, None) == expected
    assert state(status, [{"id": 1, "state": T["OPEN"]}]) == expected


def test_state_without_status_and_without_tasks_is_pending():
    assert state(None, None) == "pending"
    assert state(None, []) == "pending"


@pytest.mark.parametrize("open_state", ["FREE", "OPEN", "ASSIGNED"])
def test_state_without_status_is_pending_while_a_task_is_open(open_state):
    tasks = [{"id": 1, "state": T["CLOSED"]}, {"id": 2, "state": T[open_state]}]
    assert state(None, tasks) == "pending"


def test_state_without_status_is_finished_when_every_task_is_done():
    tasks = [
        {"id": 1, "state": T["CLOSED"]},
        {"id": 2, "state": T["FAILED"]},
        {"id": 3, "state": T["CANCELED"]},
    ]
    assert state(None, tasks) == "finished"


def test_compose_label_is_the_date_of_the_id_else_the_id():
    assert compose_label("Fedora-Rawhide-20150812") == "20150812"
    assert compose_label("Fedora-Rawhide-20240102.n.0") == "20240102"
    assert compose_label("https://kojipkgs.example/compose/Fedora-24-20160101.n.3/") == "20160101"
    assert compose_label("/srv/composes/Fedora-Rawhide-20150812") == "20150812"
    assert compose_label("rawhide-nightly") == "rawhide-nightly"


def test_nightly_task_query_is_one_query_per_method_since_the_day_began():
    query = nightly_task_query(OLD, ["createLiveCD", "createImage", "createImage"])
    since = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))
    assert query == {
        "createImage": {"decode": True, "createdAfter": since, "method": "createImage"},
        "createLiveCD": {"decode": True, "createdAfter": since, "method": "createLiveCD"},
    }
    assert nightly_task_query("rawhide-nightly", ["image"]) == {
        "image": {"decode": True, "method": "image"}
    }
    assert sorted(nightly_task_query(OLD)) == [
        "appliance",
        "createAppliance",
        "createImage",
        "createLiveCD",
        "image",
        "livecd",
    ]


def test_tasks_for_compose_matches_the_label_in_the_decoded_request():
    tasks = [
        {"id": 7, "state": 2, "request": ["Fedora-Live-KDE", "Rawhide", "20150812", "x86_64"]},
        {"id": 3, "state": 1, "request": ["Fedora-Cloud", "Rawhide", {"release": "20150812"}]},
        {"id": 5, "state": 2, "request": ["Fedora-Live-KDE", "Rawhide", "20150811", "x86_64"]},
        {"id": 9, "state": 2, "request": None},
        {"id": 7, "state": 2, "request": ["Fedora-Live-KDE", "Rawhide", "20150812", "x86_64"]},
    ]
    assert [t["id"] for t in tasks_for_compose(tasks, "20150812")] == [3, 7]
    assert [t["id"] for t in tasks_for_compose(tasks, "20150811")] == [5]
    assert tasks_for_compose(tasks, "Fedora-Rawhide-20150812") == []


# --- reading ---------------------------------------------------------------------------------


def test_read_local_compose(tree):
    compose = read_location(str(tree / OLD))
    assert (compose.id, compose.status, compose.location) == (OLD, "FINISHED", str(tree / OLD))
    assert (compose.date, compose.type, compose.respin) == ("20240101", "nightly", 0)
    assert (compose.release_short, compose.release_version) == ("Fedora", "Rawhide")
    assert keys(compose.images) == [
        ("Everything", "netinst", "iso", "x86_64"),
        ("Server", "dvd", "iso", "aarch64"),
        ("Server", "dvd", "iso", "x86_64"),
        ("Workstation", "live", "iso", "x86_64"),
    ]
    ws = compose.images[-1]
    assert ws.path == f"Workstation/x86_64/images/Workstation-live-x86_64-{OLD}.iso"
    assert ws.size == (tree / OLD / ws.path).stat().st_size


def test_read_symlinked_path_resolves_to_the_compose(tree):
    compose = read_location(str(tree / "latest-Fedora-Rawhide"))
    assert compose.id == NEW
    assert compose.location == str((tree / NEW).resolve())
    assert compose.status == "FINISHED_INCOMPLETE"
    assert read_location((tree / "latest-Fedora-Rawhide").as_uri()) == compose


def test_read_over_http(tree):
    with ComposeServer(tree) as server:
        compose = read_location(server.url_for("latest-Fedora-Rawhide/"))
        assert server.requests == [
            "/latest-Fedora-Rawhide/STATUS",
            "/latest-Fedora-Rawhide/metadata/composeinfo.json",
            "/latest-Fedora-Rawhide/metadata/images.json",
        ]
    assert compose.id == NEW
    assert compose.location == server.url_for("latest-Fedora-Rawhide/")
    assert compose.status == "FINISHED_INCOMPLETE"
    assert compose.images == read_location(str(tree / NEW)).images


def test_status_changes_are_seen(tree):
    set_status(tree / NEW, "STARTED")
    assert read_location(str(tree / NEW)).status == "STARTED"
    set_status(tree / NEW, None)
    assert read_location(str(tree / NEW)).status is None


def test_http_404_status_is_no_status(tree):
    set_status(tree / OLD, None)
    with ComposeServer(tree) as server:
        compose = read_location(server.url_for(OLD))
    assert compose.status is None
    assert compose.id == OLD
    assert len(compose.images) == 4


def test_old_style_nightly_without_metadata(tmp_path):
    path = write_compose(tmp_path, "Fedora-Rawhide-20150812.0", None, None, composeinfo=False)
    os.rename(path, tmp_path / "Fedora-Rawhide-20150812")
    compose = read_location(str(tmp_path / "Fedora-Rawhide-20150812"))
    assert compose == Compose(
        id="Fedora-Rawhide-20150812",
        location=str(tmp_path / "Fedora-Rawhide-20150812"),
        status=None,
        images=(),
        date="20150812",
    )
    with ComposeServer(tmp_path) as server:
        over_http = read_location(server.url_for("Fedora-Rawhide-20150812/"))
    assert (over_http.id, over_http.status, over_http.images) == (
        "Fedora-Rawhide-20150812",
        None,
        (),
    )


def test_id_from_images_json_when_composeinfo_is_missing(tmp_path):
    path = write_compose(tmp_path, OLD, OLD_IMAGES, None, composeinfo=False)
    os.symlink(path, tmp_path / "latest")
    compose = read_location(str(tmp_path / "latest"))
    assert (compose.id, compose.date, compose.type, compose.respin) == (
        OLD,
        "20240101",
        "nightly",
        0,
    )
    assert compose.release_short is None
    assert len(compose.images) == 4


def test_pungi_layout_with_compose_subdirectory(tmp_path):
    inner = write_compose(tmp_path / "top", OLD, OLD_IMAGES, None)
    top = tmp_path / OLD
    top.mkdir()
    os.rename(inner, top / "compose")
    set_status(top, "FINISHED")
    compose = read_location(str(top))
    assert (compose.id, compose.status, len(compose.images)) == (OLD, "FINISHED", 4)


def test_http_500_on_images_json_names_the_url(tree):
    with ComposeServer(tree) as server:
        server.fail(f"{OLD}/metadata/images.json", 500)
        url = server.url_for(f"{OLD}/metadata/images.json")
        with pytest.raises(ComposeError) as err:
            read_location(server.url_for(OLD))
    assert str(err.value) == f"{url}: HTTP 500 Internal Server Error"


def test_http_missing_compose_is_an_error(tree):
    with ComposeServer(tree) as server:
        with pytest.raises(ComposeError, match="no compose there") as err:
            read_location(server.url_for("Fedora-Rawhide-20991231.n.0"))
    assert server.url_for("Fedora-Rawhide-20991231.n.0") in str(err.value)


def test_unreachable_server_is_an_error(tree):
    with ComposeServer(tree) as server:
        url = server.url_for(OLD)
    with pytest.raises(ComposeError) as err:
        read_location(url, timeout=5)
    assert str(err.value).startswith(f"{url}/STATUS: cannot read: ")


def test_bad_json_names_the_file(tree):
    (tree / OLD / "metadata" / "composeinfo.json").write_text("{not json")
    with pytest.raises(ComposeError) as err:
        read_location(str(tree / OLD))
    message = str(err.value)
    assert message.startswith(f"{tree / OLD / 'metadata' / 'composeinfo.json'}: ")
    assert "not valid productmd ComposeInfo metadata" in message


def test_json_that_is_not_productmd_names_the_file(tree):
    (tree / OLD / "metadata" / "images.json").write_text('{"payload": {}}')
    with pytest.raises(ComposeError) as err:
        read_location(str(tree / OLD))
    assert str(err.value).startswith(f"{tree / OLD / 'metadata' / 'images.json'}: not valid")


def test_missing_local_directory_is_an_error(tmp_path):
    with pytest.raises(ComposeError, match="cannot read the compose") as err:
        read_location(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value)


def test_unsupported_scheme(tmp_path):
    with pytest.raises(ComposeError, match="unsupported compose location"):
        read_location("rsync://example.org/compose")


# --- the report ------------------------------------------------------------------------------

EXPECTED = parse_expected(
    [
        {"subvariant": "Workstation", "type": "live", "arch": "x86_64"},
        {"subvariant": "Server", "type": "dvd", "arch": "aarch64"},
        {"subvariant": "KDE", "type": "live", "arch": "x86_64"},
        {"subvariant": "Workstation", "type": "live", "arch": "aarch64"},
    ]
)
JOBS = [
    FailedJob("server_realmd_join", "https://openqa.example/tests/12", "failed"),
    FailedJob("install_default", "https://openqa.example/tests/10", "incomplete"),
]


def test_check_diffs_by_identity_not_by_path(tree):
    old, new = read_location(str(tree / OLD)), read_location(str(tree / NEW))
    assert {i.path for i in old.images}.isdisjoint({i.path for i in new.images})
    report = check(new, old, EXPECTED, JOBS)
    assert keys(report.added) == [
        ("Cloud_Base", "qcow2", "qcow2", "x86_64"),
        ("KDE", "live", "iso", "x86_64"),
    ]
    assert keys(report.removed) == [("Server", "dvd", "iso", "aarch64")]
    assert report.missing_expected == (
        Expected("Server", "dvd", "aarch64"),
        Expected("Workstation", "live", "aarch64"),
    )
    assert [j.name for j in report.failed_jobs] == ["install_default", "server_realmd_join"]
    assert (report.compose_id, report.previous_id, report.status) == (
        NEW,
        OLD,
        "FINISHED_INCOMPLETE",
    )
    assert report.location == str(tree / NEW)


def test_check_without_previous_has_no_diff(tree):
    report = check(read_location(str(tree / OLD)), None, EXPECTED, [])
    assert (report.added, report.removed, report.previous_id) == ((), (), None)
    assert report.missing_expected == (
        Expected("KDE", "live", "x86_64"),
        Expected("Workstation", "live", "aarch64"),
    )


def test_expected_matches_variant_when_there_is_no_subvariant():
    img = Image("Server", "", "dvd", "iso", "x86_64", "Server/x86_64/iso/a.iso")
    compose = Compose(id="c", location="/c", status="FINISHED", images=(img,))
    report = check(compose, None, [Expected("Server", "dvd", "x86_64")], [])
    assert report.missing_expected == ()


def test_report_json_round_trip(tree):
    report = check(read_location(str(tree / NEW)), read_location(str(tree / OLD)), EXPECTED, JOBS)
    data = report.to_json()
    assert Report.from_json(data) == report
    assert Report.from_json(json.loads(json.dumps(data))).to_json() == data
    assert sorted(data) == [
        "added",
        "compose",
        "failed_jobs",
        "missing_expected",
        "previous",
        "removed",
    ]
    assert data["removed"] == [
        {
            "variant": "Server",
            "subvariant": "Server",
            "type": "dvd",
            "format": "iso",
            "arch": "aarch64",
            "path": f"Server/aarch64/images/Server-dvd-aarch64-{OLD}.iso",
            "size": (tree / OLD / f"Server/aarch64/images/Server-dvd-aarch64-{OLD}.iso")
            .stat()
            .st_size,
            "bootable": False,
        }
    ]
    assert data["failed_jobs"][0] == {
        "name": "install_default",
        "url": "https://openqa.example/tests/10",
        "result": "incomplete",
    }


def test_render_text_and_subject(tree):
    report = check(read_location(str(tree / NEW)), read_location(str(tree / OLD)), EXPECTED, JOBS)
    assert subject(report) == f"Compose check report: {NEW} (FINISHED_INCOMPLETE)"
    assert render_text(report) == (
        f"Compose: {NEW}\n"
        f"Location: {tree / NEW}\n"
        "Status: FINISHED_INCOMPLETE\n"
        f"Previous compose: {OLD}\n"
        "\n"
        "Missing expected images:\n"
        "\n"
        "  Server dvd aarch64\n"
        "  Workstation live aarch64\n"
        "\n"
        "Failed jobs:\n"
        "\n"
        "  install_default (incomplete): https://openqa.example/tests/10\n"
        "  server_realmd_join (failed): https://openqa.example/tests/12\n"
        "\n"
        f"Images in this compose but not {OLD}:\n"
        "\n"
        "  Cloud_Base qcow2 qcow2 x86_64: "
        f"Cloud/x86_64/images/Cloud_Base-qcow2-x86_64-{NEW}.qcow2\n"
        f"  KDE live iso x86_64: Spins/x86_64/images/KDE-live-x86_64-{NEW}.iso\n"
        "\n"
        f"Images in {OLD} but not this compose:\n"
        "\n"
        f"  Server dvd iso aarch64: Server/aarch64/images/Server-dvd-aarch64-{OLD}.iso\n"
    )


def test_render_text_empty_sections():
    report = Report(compose_id="c", location="/c", status=None, previous_id="b")
    assert subject(report) == "Compose check report: c (no STATUS)"
    assert render_text(report) == (
        "Compose: c\n"
        "Location: /c\n"
        "Status: no STATUS file\n"
        "Previous compose: b\n"
        "\n"
        "No missing expected images.\n"
        "\n"
        "No failed jobs.\n"
        "\n"
        "No images in this compose but not b.\n"
        "\n"
        "No images in b but not this compose.\n"
    )
    no_previous = Report(compose_id="c", location="/c", status="FINISHED", previous_id=None)
    assert render_text(no_previous).endswith(
        "No failed jobs.\n\nNo previous compose to compare with.\n"
    )


# --- expected images -------------------------------------------------------------------------


def test_parse_expected_sorts_and_deduplicates():
    entries = [
        {"subvariant": "Server", "type": "dvd", "arch": "x86_64"},
        {"subvariant": "KDE", "type": "live", "arch": "x86_64"},
        {"subvariant": "Server", "type": "dvd", "arch": "x86_64"},
    ]
    assert parse_expected(entries) == (
        Expected("KDE", "live", "x86_64"),
        Expected("Server", "dvd", "x86_64"),
    )
    assert parse_expected([]) == ()


def test_parse_expected_names_every_bad_entry():
    with pytest.raises(ValueError) as err:
        parse_expected(
            [
                {"subvariant": "KDE", "type": "live", "arch": "x86_64"},
                {"subvariant": "KDE", "type": "live"},
                {"subvariant": "KDE", "type": "livecd", "arch": "x86_64"},
                {"subvariant": "", "type": "live", "arch": "x86_64", "format": "iso"},
                "KDE:live:x86_64",
            ]
        )
    lines = str(err.value).splitlines()
    assert lines[0] == "expected image #2 {'subvariant': 'KDE', 'type': 'live'}: missing key 'arch'"
    assert lines[1].startswith(
        "expected image #3 {'subvariant': 'KDE', 'type': 'livecd', 'arch': 'x86_64'}: "
        "unknown image type 'livecd' (a productmd image type: appx, boot, "
    )
    assert lines[2] == (
        "expected image #4 {'subvariant': '', 'type': 'live', 'arch': 'x86_64', 'format': 'iso'}: "
        "unknown key 'format'; 'subvariant' must be a non-empty string"
    )
    assert lines[3] == (
        "expected image #5 'KDE:live:x86_64': expected a mapping with keys subvariant, type, arch"
    )
    assert len(lines) == 4


# --- CLI -------------------------------------------------------------------------------------


def test_cli_text_report_exit_0_when_nothing_is_missing(tree, capsys):
    with ComposeServer(tree) as server:
        code = cli.main(
            [
                "compose-check",
                server.url_for("latest-Fedora-Rawhide"),
                "--previous",
                str(tree / OLD),
                "--expected",
                "KDE:live:x86_64",
                "--expected",
                "Workstation:live:x86_64",
            ]
        )
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        f"Compose check report: {NEW} (FINISHED_INCOMPLETE)",
        "",
        f"Compose: {NEW}",
    ]
    assert "No missing expected images." in lines
    assert f"  KDE live iso x86_64: Spins/x86_64/images/KDE-live-x86_64-{NEW}.iso" in lines


def test_cli_json_exit_1_when_expected_images_are_missing(tree, capsys):
    code = cli.main(
        ["compose-check", str(tree / NEW), "--expected", "Server:dvd:aarch64", "--json"]
    )
    out, err = capsys.readouterr()
    assert (code, err) == (1, "")
    data = json.loads(out)
    assert data["missing_expected"] == [{"subvariant": "Server", "type": "dvd", "arch": "aarch64"}]
    assert data["previous"] is None
    assert data["compose"] == {
        "id": NEW,
        "location": str(tree / NEW),
        "status": "FINISHED_INCOMPLETE",
    }


def test_cli_exit_2_when_a_compose_cannot_be_read(tree, capsys):
    with ComposeServer(tree) as server:
        server.fail(f"{OLD}/metadata/images.json", 503)
        url = server.url_for(f"{OLD}/metadata/images.json")
        code = cli.main(["compose-check", str(tree / NEW), "--previous", server.url_for(OLD)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == f"gating compose-check: {url}: HTTP 503 Service Unavailable\n"


def test_cli_exit_2_on_a_bad_expected_image(tree, capsys):
    code = cli.main(["compose-check", str(tree / NEW), "--expected", "KDE:livecd:x86_64"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(
        "gating compose-check: expected image #1 "
        "{'subvariant': 'KDE', 'type': 'livecd', 'arch': 'x86_64'}: unknown image type 'livecd'"
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compose-check", str(tree / NEW), "--expected", "KDE-live"])
    assert exit_.value.code == 2
    assert "'KDE-live' is not SUBVARIANT:TYPE:ARCH" in capsys.readouterr().err
