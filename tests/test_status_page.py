"""The status page (GET /admin/ on the admin listener), driven in headless Chromium.

A real proxy runs on simulated replicas and the page is used as an operator would use it: token
entry, the table against ``GET /admin/backends``, drain and enable buttons, the auth error banner,
and a replica going down showing up in the table and the timeline. Every wait is on a DOM
condition (Playwright's auto-waiting ``expect``), never a fixed sleep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .support import RunningProxy, Stack, client

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "t0k"
TOKEN_KEY = "haproxy-ai.admin-token"  # the page's sessionStorage key
FAST_PROBES = {"active": {"interval": "50ms", "fast_interval": "20ms", "rise": 1, "fall": 2, "jitter": 0}}
# The page refreshes every 2 s; leave room for one missed beat on a slow machine.
WAIT_MS = 8_000
# Chromium's own console line for an HTTP error answer (the page shows it in its banner too).
AUTH_FAILURE = re.compile(r"^Failed to load resource: the server responded with a status of 40[13]\b")
# Shown on the page exactly as given: a name that would run script if the page used innerHTML.
HOSTILE_NAME = "<img src=x onerror=window.__xss=1>"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="the status page tests need Chromium at /usr/bin/chromium (Debian: chromium)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary profile (user data dir).
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page plus everything it reported as an error."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def assert_no_errors(self, allowed: re.Pattern[str] | None = None) -> None:
        assert self.page_errors == []
        unexpected = [m for m in self.console_errors if allowed is None or not allowed.search(m)]
        assert unexpected == []


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    w = Watched(page)
    page.on("console", lambda m: w.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: w.page_errors.append(str(e)))
    try:
        yield w
    finally:
        context.close()


def start(stack: Stack, names: list[str], **sections: Any) -> tuple[RunningProxy, list[Any]]:
    replicas = [stack.backend() for _ in names]
    proxy = stack.proxy(
        [{"url": r.url, "name": n} for r, n in zip(replicas, names, strict=True)],
        admin={"token": TOKEN},
        **sections,
    )
    return proxy, replicas


def api_backends(proxy: RunningProxy) -> list[dict[str, Any]]:
    with client(proxy.admin_url) as c:
        r = c.get("/admin/backends", headers={"authorization": f"Bearer {TOKEN}"})
        r.raise_for_status()
        return list(r.json()["backends"])


def api_state(proxy: RunningProxy, name: str) -> str:
    return next(b["state"] for b in api_backends(proxy) if b["name"] == name)


def open_page(w: Watched, proxy: RunningProxy, token: str | None = None) -> Page:
    if token is not None:  # as if entered earlier in this tab: the page keeps it in sessionStorage
        w.page.add_init_script(f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(token)})")
    w.page.goto(f"{proxy.admin_url}/admin/")
    return w.page


def row(page: Page, name: str) -> Any:
    return page.locator(f"#backend-rows tr[data-backend={json.dumps(name)}]")


def wait_for_rows(page: Page, expected: list[list[str]]) -> None:
    """Until the table shows exactly these [name, state] rows, in this order."""
    page.wait_for_function(
        """expected => JSON.stringify(
             [...document.querySelectorAll("#backend-rows tr[data-backend]")]
               .map(r => [r.dataset.backend, r.querySelector(".state").textContent])
           ) === JSON.stringify(expected)""",
        arg=expected,
    )


def wait_for_refreshes(page: Page, n: int) -> None:
    page.wait_for_function("n => Number(document.getElementById('updated').dataset.refreshes) >= n", arg=n)


def test_page_loads_clean_and_matches_the_api(stack: Stack, watched: Watched) -> None:
    proxy, _ = start(stack, ["gpu-a", "gpu-b", HOSTILE_NAME], health=FAST_PROBES)
    with client(proxy.url) as c:
        for _ in range(3):
            c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    page = open_page(watched, proxy, TOKEN)

    wait_for_rows(page, [[b["name"], b["state"]] for b in api_backends(proxy)])
    wait_for_refreshes(page, 2)  # the refresh loop keeps going, cleanly
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#v-routable")).to_have_text("3 / 3")
    expect(page.locator("#v-panic")).to_have_text("off")
    expect(page.locator("#l-avail")).to_have_text("P(≥ 1 of 3 healthy)")
    expect(page.locator("#v-avail")).to_have_text("100 %")  # no failure seen: every replica up all along
    expect(page.locator("#counters")).to_contain_text("Requests by status code")
    expect(page.locator("#counters .counter").first.locator("tr").first).to_have_text(re.compile(r"^200\s*3$"))
    expect(page.locator("[data-timeline-backend] rect.seg.healthy")).to_have_count(3)
    # The hostile name is text, in the table and the timeline, and ran nothing.
    expect(row(page, HOSTILE_NAME).locator(".nm")).to_have_text(HOSTILE_NAME)
    expect(page.locator("main img")).to_have_count(0)
    assert page.evaluate("window.__xss") is None
    watched.assert_no_errors()


def test_entering_the_token_shows_the_backends(stack: Stack, watched: Watched) -> None:
    proxy, _ = start(stack, ["b1", "b2"])
    page = open_page(watched, proxy)

    banner = page.locator("#banner")
    expect(banner).to_contain_text("Admin token required")
    expect(page.locator("#backend-rows tr")).to_have_count(0)
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()

    wait_for_rows(page, [[b["name"], b["state"]] for b in api_backends(proxy)])
    expect(banner).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") == TOKEN
    watched.assert_no_errors(allowed=AUTH_FAILURE)  # only the 401s before the token was entered


def test_a_wrong_token_shows_the_auth_error(stack: Stack, watched: Watched) -> None:
    proxy, _ = start(stack, ["b1"])
    page = open_page(watched, proxy, "not-the-token")

    banner = page.locator("#banner")
    expect(banner).to_contain_text("Admin token rejected (403)")
    expect(page.locator("#updated")).to_contain_text("paused")  # not a silently stale page
    expect(page.get_by_label("Admin token")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#backend-rows tr")).to_have_count(0)

    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    wait_for_rows(page, [["b1", "healthy"]])
    expect(banner).to_be_hidden()
    watched.assert_no_errors(allowed=AUTH_FAILURE)


def test_drain_then_enable_from_the_page(stack: Stack, watched: Watched) -> None:
    proxy, _ = start(stack, ["b1", "b2"])
    page = open_page(watched, proxy, TOKEN)
    wait_for_rows(page, [["b1", "healthy"], ["b2", "healthy"]])
    b1 = row(page, "b1")

    b1.locator("button.drain").click()
    expect(b1.locator(".state")).to_have_text("draining")
    assert api_state(proxy, "b1") == "draining"
    expect(row(page, "b2").locator(".state")).to_have_text("healthy")
    expect(b1.locator("button.drain")).to_be_disabled()

    b1.locator("button.enable").click()
    expect(b1.locator(".state")).to_have_text("healthy")
    assert api_state(proxy, "b1") == "healthy"
    expect(b1.locator("button.enable")).to_be_disabled()
    watched.assert_no_errors()


def test_a_stopped_replica_shows_unhealthy(stack: Stack, watched: Watched, tmp_path: Path) -> None:
    proxy, replicas = start(stack, ["gpu-a", "gpu-b", "gpu-c"], health=FAST_PROBES)
    with client(proxy.url) as c:
        for _ in range(6):
            c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    page = open_page(watched, proxy, TOKEN)
    wait_for_rows(page, [["gpu-a", "healthy"], ["gpu-b", "healthy"], ["gpu-c", "healthy"]])

    stack.loop.run(replicas[1].stop())
    gpu_b = row(page, "gpu-b")
    expect(gpu_b.locator(".state")).to_have_text("unhealthy")  # picked up by the page's own refresh
    assert api_state(proxy, "gpu-b") == "unhealthy"
    expect(gpu_b.locator("td.probe")).to_contain_text("fail")
    timeline = page.locator('[data-timeline-backend="gpu-b"]')
    expect(timeline.locator("rect.seg.healthy")).to_have_count(1)  # up until the stop...
    expect(timeline.locator("rect.seg.unhealthy")).to_have_count(1)  # ...then down, up to now
    expect(page.locator("#v-routable")).to_have_text("2 / 3")
    expect(page.locator('[data-timeline-backend="gpu-a"] rect.seg.unhealthy')).to_have_count(0)

    page.select_option("#window", "60")
    shot = tmp_path / "status-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    watched.assert_no_errors()


def test_pools_table_shows_each_pool_with_its_models(stack: Stack, watched: Watched) -> None:
    llama = stack.backend(model="llama-3-8b")
    qwen = stack.backend(model=HOSTILE_NAME)  # a model id is data too: rendered as text
    proxy = stack.proxy(
        [],
        pools={
            "llama": {"backends": [{"url": llama.url, "name": "gpu-a"}], "balancer": {"type": "hash"}},
            "qwen": {"backends": [{"url": qwen.url, "name": "gpu-b"}]},
        },
        admin={"token": TOKEN},
        health=FAST_PROBES,
    )
    page = open_page(watched, proxy, TOKEN)
    page.wait_for_function(
        """expected => [...document.querySelectorAll("#pool-rows tr[data-pool]")]
                        .map(r => r.cells[5].textContent).join("|") === expected""",
        arg=f"llama-3-8b|{HOSTILE_NAME}",
    )
    rows = page.locator("#pool-rows tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(1)).to_have_text("hash")
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("1 / 1")
    expect(page.locator('[data-backend="gpu-b"] .url')).to_contain_text("pool qwen")
    assert page.locator("#pool-rows img, #pool-rows script").count() == 0
    assert page.evaluate("window.__xss") is None
    watched.assert_no_errors()


def test_a_single_pool_proxy_has_no_pools_table(stack: Stack, watched: Watched) -> None:
    proxy, _ = start(stack, ["gpu-a"], health=FAST_PROBES)
    page = open_page(watched, proxy, TOKEN)
    wait_for_refreshes(page, 1)
    expect(page.locator("#pools-section")).to_be_hidden()
    watched.assert_no_errors()
