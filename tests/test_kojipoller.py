"""gating.kojipoller: the scheduler's settings (the polling itself runs against the koji test
hub in tests/integration/test_koji_events.py, and its logic in tests/test_kojievents.py)."""

from __future__ import annotations

from gating.kojievents import KOJI_TAG, WatchSet, watch_of
from gating.kojipoller import KojiEventSettings, _with_password
from gating.outage import RetryPolicy


def test_the_amqp_password_goes_into_the_url_quoted():
    url = _with_password("amqps://gating@rabbit.example.org:5671/%2Fpub", "p@ss:/word")
    assert url == "amqps://gating:p%40ss%3A%2Fword@rabbit.example.org:5671/%2Fpub"
    assert _with_password("amqp://rabbit/", "x") == "amqp://guest:x@rabbit/"


def test_settings_are_hashable_and_compare_by_value():
    watches = WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a", "b"]}),))
    a = KojiEventSettings(watches=watches, server="http://h/kojihub", topurl="http://h/files")
    b = KojiEventSettings(
        watches=WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a", "b"]}),)),
        server="http://h/kojihub",
        topurl="http://h/files",
    )
    assert a == b and hash(a) == hash(b)
    session = a.session()
    assert session.hub == "http://h/kojihub"
    session.close()


def test_a_poll_cycle_gives_a_down_hub_about_one_poll_interval():
    watches = WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a"]}),))
    settings = KojiEventSettings(
        watches=watches, server="http://h/kojihub", topurl="http://h/files", poll_interval=30
    )
    session = settings.session()
    # the next cycle asks again from the same cursor: no 6-hour wait inside a cycle
    assert session.settings.retry == RetryPolicy(total=30, initial=1, maximum=15)
    assert session.outage() is None
    session.close()
