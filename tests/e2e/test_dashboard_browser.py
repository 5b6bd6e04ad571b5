"""The whole platform, driven by the device simulator, seen in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from local_platform.broker import free_port
from tests.support.platform import Platform
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import answers, wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEVICES = [f"e2e-{n:05d}" for n in range(8)]


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: apt-get install chromium")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


def test_fleet_and_device_pages_in_a_browser(platform: Platform, browser: Any) -> None:
    api_port, dashboard_port = free_port(), free_port()
    env = platform.environment(
        api_token=TEST_TOKEN,
        api_port=str(api_port),  # where the dashboard sends acknowledgements
        dashboard_refresh_seconds="2",
        aggregator_block_ms="100",
    )
    platform.serve("api", "--port", str(api_port), env=env)
    platform.ingest()
    platform.serve("aggregate", env=env)
    platform.serve("alarms", env=env, ready="evaluating in group")
    platform.serve("dashboard", "--port", str(dashboard_port), env=env)
    api = f"http://127.0.0.1:{api_port}"
    wait_for(lambda: answers(f"{api}/healthz"), timeout=30)
    fleet = ["--devices", str(len(DEVICES)), "--rate", "4", "--duration", "6", "--prefix", "e2e"]
    simulated = platform.run("simulate", *fleet, "--api-url", api, "--json", env=env, timeout=120)
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    summary = orjson.loads(simulated.stdout)
    assert summary["devices"] == len(DEVICES) and summary["failures"] == 0
    wait_for(
        lambda: (
            platform.db.execute("SELECT count(*) FROM read_models.device_activity").fetchone()
            == (len(DEVICES),)
        ),
        timeout=60,
    )
    wait_for(lambda: answers(f"http://127.0.0.1:{dashboard_port}/_stcore/health"), timeout=60)

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    base = f"http://127.0.0.1:{dashboard_port}"
    page.goto(f"{base}/")  # Fleet is the default page
    registered = page.locator('[data-testid="stMetric"]', has_text="Registered")
    registered.wait_for(timeout=30_000)
    wait_for(lambda: str(len(DEVICES)) in registered.inner_text(), timeout=20)
    online = page.locator('[data-testid="stMetric"]', has_text="Online")
    wait_for(lambda: online.inner_text().split()[-1] == str(len(DEVICES)), timeout=20)
    # The table draws on a canvas (no text in the DOM): check that it is there and sized.
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for(timeout=20_000)
    assert page.get_by_text(f"{len(DEVICES)} devices, page 1 of 1").count() == 1
    page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)

    page.goto(f"{base}/device?device={DEVICES[0]}")
    chart = page.locator(
        '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
    ).first
    chart.wait_for(timeout=30_000)
    box = chart.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 100
    assert page.get_by_text(f"Simulated thermostat {DEVICES[0]}").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "device.png"), full_page=True)

    page.goto(f"{base}/pipeline")
    page.locator('[data-testid="stMetric"]', has_text="Dead letters").first.wait_for(timeout=30_000)
    # The grid keeps an accessible (hidden) copy of its cells in the DOM.
    page.locator('td[role="gridcell"]', has_text="iotp-aggregators").first.wait_for(
        state="attached", timeout=30_000
    )
    page.screenshot(path=str(ARTIFACTS / "pipeline.png"), full_page=True)
    acknowledge_an_alarm(platform, page, base)


def acknowledge_an_alarm(platform: Platform, page: Any, base: str) -> None:
    """Readings over the declared range raise an alarm; the Alarms page acknowledges it."""
    from datetime import UTC, datetime, timedelta

    from tests.support.ingest_harness import publish

    device, now = DEVICES[0], datetime.now(UTC)
    hot = [
        {"ts": (now + timedelta(seconds=n)).isoformat(), "metrics": {"temperature": 99.0}}
        for n in range(3)  # the default rule raises on the third reading in a row
    ]
    publish(platform.mqtt_url, [(f"devices/{device}/telemetry", orjson.dumps(m)) for m in hot])

    def alarm_states() -> list[str]:
        rows = platform.db.execute(
            "SELECT state FROM read_models.alarms WHERE device_id = %s", (device,)
        ).fetchall()
        return [row[0] for row in rows]

    wait_for(lambda: "active" in alarm_states(), timeout=60)
    page.goto(f"{base}/alarms?device={device}")
    page.get_by_text("Acknowledge an active alarm").wait_for(timeout=30_000)
    page.get_by_label("Note (optional)").fill("checking the boiler")
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "alarms-acknowledge.png"), full_page=True)
    page.get_by_role("button", name="Acknowledge", exact=True).click()
    # No login here: the dashboard cannot name a person and acknowledges as itself.
    page.get_by_text("acknowledged by dashboard").wait_for(timeout=30_000)
    wait_for(lambda: "acknowledged" in alarm_states(), timeout=60)
    page.goto(f"{base}/alarms?device={device}")
    page.get_by_text("Acknowledged (1)").wait_for(timeout=30_000)
    page.get_by_text("No cleared alarm.").wait_for(timeout=30_000)  # the whole page is drawn
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "alarms.png"), full_page=True)
