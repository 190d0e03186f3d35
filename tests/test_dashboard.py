"""The deliveries page: credentials, escaping, hidden text, confirmed actions, a real browser.

Most tests mount the dashboard next to the receiver on the in-memory broker,
with a real dramatiq worker in this process (the development setup). The last
one runs the production setup in headless Chromium: Redis, a worker, and
``mem0-receiver dashboard`` served by uvicorn in its own process. It also
makes the README's picture::

    DASHBOARD_SCREENSHOT=docs/dashboard.png .venv/bin/pytest tests/test_dashboard.py -k chromium
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    cli_env,
    free_port,
    mem0_receiver,
    output,
    start_worker,
    stop_worker,
    wait_for_port,
    wait_until,
)
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from mem0_receiver import MemoryEvent, Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.dashboard import Dashboard
from mem0_receiver.deliveries import DeliveryRecord, recent_deliveries
from mem0_receiver.errors import ConfigurationError
from mem0_receiver.snapshot import activity
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret

PASSWORD = "correct horse battery staple"
AUTH = ("admin", PASSWORD)
MEMORY = "Sam's PIN is 4931 <img src=x onerror=alert(1)>"
SCRIPT_TYPE = "<script>alert(1)</script>"
INSTALL = (
    "apt-get update && apt-get install -y chromium chromium-driver "
    "(Debian/Ubuntu), and pip install -e '.[test]' for selenium"
)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "The page has no CSRF field."
    return match.group(1)


@dataclass
class Site:
    """The receiver and the dashboard mounted in one app, on the in-memory broker."""

    client: TestClient
    receiver: Receiver
    fixed: threading.Event

    def post_event(self, body: bytes) -> str:
        url = self.receiver.webhook_url("http://testserver/webhooks/mem0")
        response = self.client.post(url, content=body)
        assert response.status_code == 202, response.text
        delivery_id: str = response.json()["delivery_id"]
        return delivery_id

    def page(self, query: str = "") -> str:
        response = self.client.get(f"/dashboard/{query}", auth=AUTH)
        assert response.status_code == 200, response.text
        text: str = response.text
        return text

    def form(self, action: str, **fields: Any) -> Any:
        return self.client.post(
            f"/dashboard/{action}", data=fields, auth=AUTH, follow_redirects=False
        )


@pytest.fixture
def site() -> Iterator[Site]:
    receiver = Receiver(secrets=[new_secret()], environ={})
    fixed = threading.Event()

    @receiver.on("memory_add")
    def remember(event: MemoryEvent) -> None:
        pass

    @receiver.on("memory_delete", max_retries=0)
    def forget(event: MemoryEvent) -> None:
        if not fixed.is_set():
            raise RuntimeError(f"could not forget {getattr(event, 'memory', None)}")

    @receiver.on("*")
    def audit(event: MemoryEvent) -> None:
        pass

    app = Starlette(
        routes=[
            Mount("/webhooks/mem0", app=receiver),
            Mount("/dashboard", app=Dashboard(receiver, password=PASSWORD)),
        ],
        lifespan=receiver.lifespan,
    )
    worker = start_worker(receiver.broker, worker_threads=2, worker_timeout=50)
    try:
        with TestClient(app) as client:
            yield Site(client, receiver, fixed)
    finally:
        stop_worker(worker)


@pytest.fixture
def failed(site: Site) -> Site:
    """Three deliveries handled: one added memory, one failed delete, one odd event type."""
    site.post_event(make_body("memory_add", memory_id="m1", memory="Name is Alex"))
    site.post_event(make_body("memory_delete", memory_id="m2", memory=MEMORY))
    site.post_event(f'{{"event": "{SCRIPT_TYPE}", "memory_id": "m3"}}'.encode())
    store = failure_store(site.receiver.broker)
    wait_until(lambda: store.count() == 1)
    wait_until(lambda: sum(len(r.handlers) for r in recent_deliveries(site.receiver.broker)) == 5)
    return site


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/dashboard/", {}),
        ("GET", "/dashboard/", {"Authorization": "Basic YWRtaW46d3Jvbmc="}),  # admin:wrong
        ("GET", "/dashboard/", {"Authorization": "Basic d3Jvbmc6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"}),
        ("GET", "/dashboard/", {"Authorization": "Basic !!!"}),
        ("GET", "/dashboard/", {"Authorization": "Bearer anything"}),
        ("GET", "/dashboard/nothing-here", {}),
        ("POST", "/dashboard/replay", {}),
        ("POST", "/dashboard/purge", {}),
    ],
    ids=["none", "wrong-password", "wrong-user", "not-base64", "bearer", "404", "replay", "purge"],
)
def test_every_page_needs_the_dashboards_credentials(
    site: Site, method: str, path: str, headers: dict[str, str]
) -> None:
    response = site.client.request(method, path, headers=headers, data={"all": "1"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Basic realm="mem0-receiver')
    assert "needs the dashboard&#x27;s user name and password" in response.text
    assert failure_store(site.receiver.broker).count() == 0


def test_the_page_shows_deliveries_failures_queues_and_rates(failed: Site) -> None:
    response = failed.client.get("/dashboard/", auth=AUTH)
    assert response.status_code == 200
    page = response.text
    for record in recent_deliveries(failed.receiver.broker):
        assert record.delivery_id in page
    assert "test_dashboard.site.remember: ok" in page
    assert "test_dashboard.site.forget: failed" in page
    assert "Failed events (1)" in page
    assert ">RuntimeError<" in page
    assert "Queue <code>mem0</code>" in page
    assert "0.05/s" in page  # three deliveries in the last minute
    assert '<meta name="viewport"' in page
    # No script can run, nor can another site frame the page or read it from a cache.
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["cache-control"] == "no-store"
    assert "<script" not in page


def test_error_messages_and_memory_text_stay_hidden_until_the_operator_asks(
    failed: Site,
) -> None:
    hidden = failed.page()
    assert "could not forget" not in hidden
    assert "4931" not in hidden and "Name is Alex" not in hidden
    assert 'href="/dashboard/?show=text"' in hidden

    shown = failed.page("?show=text")
    escaped = "Sam&#x27;s PIN is 4931 &lt;img src=x onerror=alert(1)&gt;"
    assert f"RuntimeError: could not forget {escaped}" in shown
    assert f"memory: {escaped}" in shown
    assert "<img" not in shown


def test_attacker_chosen_text_is_escaped(failed: Site) -> None:
    page = failed.page("?show=text")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<img" not in page


@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        ({"all": "1", "confirm": "yes"}, {}),
        ({"all": "1", "confirm": "yes", "csrf": "guessed"}, {}),
        ({"all": "1", "confirm": "yes", "csrf": None}, {"Origin": "https://evil.example"}),
        ({"all": "1", "confirm": "yes", "csrf": None}, {"Referer": "https://evil.example/x"}),
        ({"all": "1", "confirm": "yes", "csrf": None}, {"Origin": "null"}),
    ],
    ids=["no-token", "wrong-token", "foreign-origin", "foreign-referer", "opaque-origin"],
)
@pytest.mark.parametrize("action", ["replay", "purge"])
def test_actions_without_the_pages_token_or_from_another_origin_are_refused(
    failed: Site, action: str, fields: dict[str, str | None], headers: dict[str, str]
) -> None:
    token = csrf_of(failed.page())
    data = {k: token if v is None else v for k, v in fields.items()}
    response = failed.client.post(
        f"/dashboard/{action}", data=data, headers=headers, auth=AUTH, follow_redirects=False
    )
    assert response.status_code == 403
    assert "nothing was done" in response.text
    assert failure_store(failed.receiver.broker).count() == 1


def test_replay_is_confirmed_first_then_runs_and_redirects_with_a_message(failed: Site) -> None:
    store = failure_store(failed.receiver.broker)
    (failure,) = store.list()
    token = csrf_of(failed.page())
    failed.fixed.set()

    asked = failed.form("replay", csrf=token, id=failure.id)
    assert asked.status_code == 200
    assert "<h1>Replay 1 failed event?</h1>" in asked.text
    assert "4931" not in asked.text
    assert 'name="confirm" value="yes"' in asked.text
    assert 'href="/dashboard/">Cancel</a>' in asked.text
    time.sleep(0.2)
    assert store.count() == 1  # Asking did nothing.

    done = failed.form("replay", csrf=token, id=failure.id, confirm="yes")
    assert done.status_code == 303
    assert done.headers["location"] == "/dashboard/?done=replay&count=1"
    page = failed.page("?done=replay&count=1")
    assert "Replayed 1 failed event: queued again" in page
    assert 'class="flash"' not in failed.page("?done=replay&count=%C2%B2")  # no crash

    def forgotten() -> bool:
        record = next(r for r in recent_deliveries(failed.receiver.broker) if r.memory_id == "m2")
        return record.handlers["test_dashboard.site.forget"] == "ok"

    wait_until(forgotten)
    assert store.count() == 0
    assert "No failed events." in failed.page()
    # Confirming again finds nothing to do.
    again = failed.form("replay", csrf=token, id=failure.id, confirm="yes")
    assert again.headers["location"] == "/dashboard/?done=replay&count=0"


def test_purge_all_is_confirmed_first_and_acts_only_on_what_was_confirmed(
    failed: Site,
) -> None:
    store = failure_store(failed.receiver.broker)
    token = csrf_of(failed.page())
    asked = failed.form("purge", csrf=token, all="1")
    assert "<h1>Purge 1 failed event?</h1>" in asked.text
    assert "deleted for good" in asked.text
    confirmed_ids = re.findall(r'name="id" value="([^"]+)"', asked.text)
    assert confirmed_ids == [f.id for f in store.list()]

    # A failure that arrives after the question is not purged by the answer.
    failed.post_event(make_body("memory_delete", memory_id="m4", memory="later"))
    wait_until(lambda: store.count() == 2)
    done = failed.client.post(
        "/dashboard/purge",
        data={"csrf": token, "confirm": "yes", "id": confirmed_ids},
        auth=AUTH,
        follow_redirects=True,
    )
    assert "Purged 1 failed event." in done.text
    (left,) = store.list()
    assert left.memory_id == "m4"


def test_asking_to_act_on_nothing_says_so(failed: Site) -> None:
    token = csrf_of(failed.page())
    response = failed.form("replay", csrf=token, id="no-such-id")
    assert "<h1>Nothing to replay</h1>" in response.text


def test_a_broker_that_does_not_answer_gives_503_not_a_traceback(make_redis: Any) -> None:
    server = make_redis()
    receiver = Receiver(secrets=[new_secret()], broker=server.url, environ={})
    server.stop()
    with TestClient(Dashboard(receiver, password=PASSWORD)) as client:
        response = client.get("/", auth=AUTH)
    assert response.status_code == 503
    assert "The broker does not answer (ConnectionError)" in response.text


def test_a_misconfigured_receiver_gives_a_page_that_says_what_to_fix() -> None:
    receiver = Receiver(secrets=[new_secret()], broker="kafka://nowhere", environ={})
    with TestClient(Dashboard(receiver, password=PASSWORD)) as client:
        response = client.get("/", auth=AUTH)
    assert response.status_code == 500
    assert "Unsupported broker URL scheme &#x27;kafka&#x27;" in response.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password": ""}, "The dashboard needs a password"),
        ({"password": "pw", "username": "a:b"}, "without a colon"),
        ({"password": "pw", "username": ""}, "non-empty"),
    ],
    ids=["empty-password", "colon-in-username", "empty-username"],
)
def test_dashboard_settings_are_checked_when_it_is_made(
    kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Dashboard(Receiver(environ={}), **kwargs)  # type: ignore[arg-type]


def test_the_rate_counts_deliveries_received_in_the_last_minute() -> None:
    now = 1_000_000.0

    def record(age: float, *statuses: str) -> DeliveryRecord:
        handlers = {f"h{i}": status for i, status in enumerate(statuses)}
        return DeliveryRecord(f"d{age}", "memory_add", None, now - age, handlers)

    records = [record(1, "ok", "failed"), record(30, "ok"), record(59, "retrying"), record(61)]
    seen = activity(records, now=now, sample=10)
    assert (seen.deliveries, seen.rate, seen.partial) == (3, 0.05, False)
    assert seen.runs == {"ok": 2, "failed": 1, "retrying": 1}
    # A sample that ends inside the minute gives a lower bound.
    assert activity(records[:2], now=now, sample=2).partial


APP = """
from pathlib import Path
from mem0_receiver import Receiver

HERE = Path(__file__).parent
receiver = Receiver()


@receiver.on("memory_add", "memory_update")
def remember(event):
    pass


@receiver.on("memory_delete", max_retries=0)
def forget(event):
    if not (HERE / "fixed").exists():
        raise RuntimeError(f"the mirror is read-only; could not forget {event.memory!r}")


@receiver.on("*")
def audit(event):
    pass
"""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "Set MEM0_RECEIVER_DASHBOARD_PASSWORD to the password"),
        ({"MEM0_RECEIVER_DASHBOARD_PASSWORD": "pw"}, "needs MEM0_RECEIVER_BROKER_URL"),
    ],
    ids=["no-password", "in-memory-broker"],
)
def test_the_dashboard_command_refuses_to_start_in_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    result = mem0_receiver("dashboard", "app:receiver", cwd=tmp_path, env=cli_env(**env))
    assert result.returncode == 2
    assert result.stderr.startswith("mem0-receiver: error: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def chromium(tmp_path: Path) -> Any:
    """Headless Debian Chromium through its chromedriver; no browser download."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(f"This test needs Chromium and its driver: {INSTALL}.", pytrace=False)
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail(f"This test needs selenium: {INSTALL}.", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(driver, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.implicitly_wait(5)  # for elements of a page that is still loading
    # A viewport (and so a screenshot) of exactly this size, whatever the window adds.
    metrics = {"width": 1000, "height": 700, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return browser


def click_and_wait(browser: Any, element: Any) -> None:
    """Click a link or button and wait until the next page has replaced this one."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")

    def replaced(browser: Any) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # What ChromeDriver 156 says, now and then, of an element of a
            # document that is being replaced, instead of "stale element".
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    element.click()
    WebDriverWait(browser, 5).until(replaced)


def test_an_operator_replays_a_failed_event_in_headless_chromium(
    tmp_path: Path, redis_url: str, spawn: Any
) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "app.py").write_text(APP)
    secret, port = new_secret(), free_port()
    env = cli_env(MEM0_RECEIVER_BROKER_URL=redis_url, MEM0_RECEIVER_DASHBOARD_PASSWORD=PASSWORD)
    board = spawn("dashboard", "app:receiver", "--port", str(port), cwd=tmp_path, env=env)
    # The same app in this process, named "app" as in the dashboard's, runs the worker.
    spec = importlib.util.spec_from_file_location("app", tmp_path / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    receiver: Receiver = module.receiver.copy(secrets=[secret], broker=redis_url)
    worker = start_worker(receiver.broker, worker_threads=2, worker_timeout=50)
    browser = None
    try:
        with TestClient(receiver) as client:
            url = receiver.webhook_url("http://testserver/")
            for body in (
                make_body("memory_add", memory_id="mem_7f3a", memory="Name is Alex"),
                make_body("memory_update", memory_id="mem_7f3a", memory="Name is Alexandra"),
                make_body("memory_categorize", memory_id="mem_7f3a", categories=["people"]),
                make_body("memory_delete", memory_id="mem_19c2", memory=MEMORY),
            ):
                assert client.post(url, content=body).status_code == 202
        store = failure_store(receiver.broker)
        wait_until(lambda: store.count() == 1)
        wait_for_port(port, process=board)

        browser = chromium(tmp_path)
        base = f"http://127.0.0.1:{port}/"
        browser.get(base)  # Without credentials: an authentication challenge, no page.
        assert "Failed events" not in browser.page_source
        browser.get(f"http://admin:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}/")
        wait_until(lambda: "Failed events (1)" in browser.page_source, timeout=5)
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "app.remember: ok" in page and "app.audit: ok" in page
        assert "app.forget: failed" in page and "RuntimeError" in page
        assert "4931" not in browser.page_source and "read-only" not in browser.page_source
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        if os.environ.get("DASHBOARD_SCREENSHOT"):  # how docs/dashboard.png is made
            browser.save_screenshot(os.environ["DASHBOARD_SCREENSHOT"])

        click_and_wait(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Show error messages"))
        assert "the mirror is read-only" in browser.find_element(By.TAG_NAME, "body").text
        assert "Sam's PIN is 4931 <img src=x onerror=alert(1)>" in browser.page_source.replace(
            "&lt;", "<"
        ).replace("&gt;", ">")

        (tmp_path / "fixed").touch()
        replay = browser.find_element(By.XPATH, "//tr[td='memory_delete']//button[.='Replay']")
        click_and_wait(browser, replay)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Replay 1 failed event?"
        assert store.count() == 1
        click_and_wait(browser, browser.find_element(By.XPATH, "//button[.='Confirm']"))
        flash = browser.find_element(By.CSS_SELECTOR, ".flash").text
        assert flash.startswith("Replayed 1 failed event")

        def replayed() -> bool:
            browser.refresh()
            body = browser.find_element(By.TAG_NAME, "body").text
            return "app.forget: ok" in body and "No failed events." in body

        wait_until(replayed, timeout=10)
        browser.save_screenshot(str(tmp_path / "dashboard-after.png"))
    finally:
        if browser is not None:
            browser.quit()
        stop_worker(worker)
    assert (tmp_path / "dashboard.png").read_bytes().startswith(b"\x89PNG")
    assert store.count() == 0
    assert PASSWORD not in output(board)
