"""The status page (``GET /``) in a real headless Chromium, against real DynLLM processes.

The browser never reloads the page: every change it shows after the first load
comes from the page's own polling and from its Load / Unload buttons.  Model
names full of HTML (``<b>``, ``<script>``, ``&``, quotes) must come out as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import requests
from markupsafe import escape
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import headless_chromium
from tests.support.harness import DynLLM, wait_for

#: Names a config accepts (no whitespace) that are also HTML.
WEIRD = "x<b>&\"'y</b><script>window.pwned=1</script>"
WEIRD_BAD = "bad<i>&amp;\"'</i><script>window.pwned=2</script>"
ADMIN_KEY = "s3cret-admin-key"


# --------------------------------------------------------------- page helpers

READ_ROW = """
const tr = [...document.querySelectorAll('#live tbody tr[data-model]')]
  .find(t => t.dataset.model === arguments[0]);
if (!tr) return null;
const cell = c => tr.querySelector('td.' + c);
return {
  name: cell('name').textContent,
  state: cell('state').dataset.state,
  port: cell('port').textContent.trim(),
  idle: cell('idle').textContent.trim(),
  inflight: cell('inflight').textContent.trim(),
  error: cell('error').textContent,
  counted: cell('vram').querySelector('.bar span').classList.contains('on'),
};
"""
FIND_BUTTON = """
const tr = [...document.querySelectorAll('#live tbody tr[data-model]')]
  .find(t => t.dataset.model === arguments[0]);
return tr ? tr.querySelector('button[data-action="' + arguments[1] + '"]') : null;
"""
READ_BUDGET = """
const b = document.getElementById('budget');
return {used: Number(b.dataset.usedMb), total: Number(b.dataset.totalMb),
        segments: b.querySelectorAll('.bar span').length};
"""
READ_MESSAGES = """
return [...document.querySelectorAll('#messages li')]
  .map(li => ({text: li.textContent, error: li.classList.contains('error')}));
"""


def row(driver: WebDriver, name: str) -> dict[str, Any]:
    found = driver.execute_script(READ_ROW, name)
    assert found is not None, f"no row for {name!r} in the page"
    return found  # type: ignore[no-any-return]


def budget(driver: WebDriver) -> dict[str, int]:
    return driver.execute_script(READ_BUDGET)  # type: ignore[no-any-return]


def messages(driver: WebDriver) -> list[dict[str, Any]]:
    return driver.execute_script(READ_MESSAGES)  # type: ignore[no-any-return]


def click(driver: WebDriver, name: str, action: str) -> None:
    """A real click on a row's button (rows are re-rendered every 2 s: retry if stale)."""
    for _ in range(50):
        button = driver.execute_script(FIND_BUTTON, name, action)
        assert button is not None, f"no {action} button for {name!r}"
        try:
            button.click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"could not click {action} for {name!r}")


def wait_state(driver: WebDriver, name: str, state: str, timeout: float = 20) -> dict[str, Any]:
    wait_for(lambda: row(driver, name)["state"] == state, timeout=timeout, interval=0.05)
    return row(driver, name)


def wait_message(driver: WebDriver, *needles: str, error: bool, timeout: float = 20) -> str:
    def found() -> str | None:
        for m in messages(driver):
            if m["error"] == error and all(n in m["text"] for n in needles):
                return str(m["text"])
        return None

    try:
        return str(wait_for(found, timeout=timeout, interval=0.05))
    except AssertionError:
        raise AssertionError(f"no message with {needles}: {messages(driver)}") from None


def open_page(driver: WebDriver, d: DynLLM) -> None:
    driver.get(d.url + "/")
    wait_for(lambda: driver.find_element(By.ID, "conn").text.startswith("updated"), timeout=10)


# ------------------------------------------------------------- browser tests


def test_buttons_polling_errors_and_escaping(
    dynllm: Callable[..., DynLLM], spec: Callable[..., dict[str, Any]]
) -> None:
    d = dynllm(
        [
            spec("a", load_delay=0.5),
            spec("b", unload_time=-1),
            spec(WEIRD),
            spec(WEIRD_BAD, fail_start=True),
            spec("slow", load_delay=4),
        ]
    )
    with headless_chromium() as driver:
        open_page(driver, d)
        for name in ("a", "b", WEIRD, WEIRD_BAD, "slow"):
            assert row(driver, name)["state"] == "unloaded"
        assert budget(driver) == {"used": 0, "total": 1000, "segments": 0}
        assert row(driver, "b")["idle"] == "never"

        # Load: the row goes to loaded with a port, the budget bar counts it.
        click(driver, "a", "load")
        a = wait_state(driver, "a", "loaded")
        assert re.fullmatch(r"\d+", a["port"]), a
        assert a["counted"] and a["inflight"] == "0"
        assert re.fullmatch(r"(\d+ min )?\d+ s", a["idle"]), a  # idle countdown, 300 s limit
        assert budget(driver) == {"used": 100, "total": 1000, "segments": 1}
        wait_message(driver, "load a: done, now loaded", error=False)
        assert d.state("a") == "loaded"

        # Unload: back to unloaded, no port, nothing counted.
        click(driver, "a", "unload")
        a = wait_state(driver, "a", "unloaded")
        assert a["port"] == "" and not a["counted"], a
        assert budget(driver)["used"] == 0
        assert d.state("a") == "unloaded"

        # A change made elsewhere shows up by itself (polling, no reload).
        assert d.post("/admin/models/load", json={"model": "b"}).status_code == 200
        wait_state(driver, "b", "loaded", timeout=10)
        assert budget(driver)["used"] == 100

        # Names made of HTML are text, in cells and in data attributes alike.
        weird = row(driver, WEIRD)
        assert weird["name"] == WEIRD
        assert driver.find_elements(By.CSS_SELECTOR, "#live tbody b, #live tbody i") == []
        assert driver.find_elements(By.CSS_SELECTOR, "#live script") == []
        click(driver, WEIRD, "load")  # the name round-trips through data-model into the JSON
        wait_state(driver, WEIRD, "loaded")
        wait_message(driver, WEIRD, "now loaded", error=False)

        # A failed load: DynLLM's error message in the message list, the row failed
        # and its (escaped) last error shown.
        click(driver, WEIRD_BAD, "load")
        text = wait_message(driver, WEIRD_BAD, "failed (503)", error=True)
        assert "failed to load model" in text, text
        bad = wait_state(driver, WEIRD_BAD, "failed")
        assert WEIRD_BAD in bad["error"] and "exited during load" in bad["error"], bad
        # The public page shows the reason only, not the backend's log lines.
        assert "failed to load model" not in bad["error"] and "\n" not in bad["error"], bad
        assert driver.find_elements(By.CSS_SELECTOR, "#live tbody b, #live tbody i") == []

        # 409 model_busy: unloading a model that is still loading.
        click(driver, "slow", "load")
        wait_state(driver, "slow", "loading", timeout=10)
        click(driver, "slow", "unload")
        text = wait_message(driver, "unload slow failed (409)", error=True, timeout=10)
        assert "is loading" in text, text
        wait_state(driver, "slow", "loaded")

        assert driver.execute_script("return window.pwned") is None
        assert driver.current_url == d.url + "/"


def test_admin_key_from_the_page(
    dynllm: Callable[..., DynLLM], spec: Callable[..., dict[str, Any]]
) -> None:
    d = dynllm([spec("a")], admin_api_key=ADMIN_KEY)
    assert d.post("/admin/models/load", json={"model": "a"}).status_code == 401
    with headless_chromium() as driver:
        open_page(driver, d)  # the page itself needs no key

        click(driver, "a", "load")
        text = wait_message(driver, "load a failed (401)", error=True)
        assert "admin API key" in text and "enter the admin key above" in text, text
        assert row(driver, "a")["state"] == "unloaded"

        driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY)
        click(driver, "a", "load")
        wait_state(driver, "a", "loaded")
        wait_message(driver, "load a: done, now loaded", error=False)

        # Kept for the tab only, never in the URL or in what the server renders.
        stored = driver.execute_script("return sessionStorage.getItem('dynllm.adminKey')")
        assert stored == ADMIN_KEY
        assert ADMIN_KEY not in driver.current_url
        driver.refresh()
        assert driver.find_element(By.ID, "admin-key").get_attribute("value") == ADMIN_KEY
        assert ADMIN_KEY not in d.get("/").text

        driver.find_element(By.ID, "admin-key").clear()
        driver.execute_script(
            "document.getElementById('admin-key').dispatchEvent(new Event('input'))"
        )
        assert driver.execute_script("return sessionStorage.getItem('dynllm.adminKey')") is None
        click(driver, "a", "unload")
        wait_message(driver, "unload a failed (401)", error=True)
        r = d.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert [m["state"] for m in r.json()["models"]] == ["loaded"]


# --------------------------------------------------------- no-browser tests


class _Rows(HTMLParser):
    """``data-model`` of every table row and the text of every ``td.name`` cell."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = []
        self.names: list[str] = []
        self.tags: list[str] = []
        self._in_name = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "tr" and a.get("data-model") is not None:
            self.models.append(str(a["data-model"]))
        self._in_name = tag == "td" and a.get("class") == "name"
        if self._in_name:
            self.names.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_name = False

    def handle_data(self, data: str) -> None:
        if self._in_name:
            self.names[-1] += data


def test_page_is_complete_html_with_every_name_escaped(
    dynllm: Callable[..., DynLLM], spec: Callable[..., dict[str, Any]]
) -> None:
    names = ["a", "b", WEIRD, WEIRD_BAD]
    d = dynllm([spec(n) for n in names], admin_api_key=ADMIN_KEY)
    for path in ("/", "/ui"):
        r = requests.get(d.url + path, timeout=10)  # no key: the page is read-only
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-store"
        assert "script-src 'nonce-" in r.headers["Content-Security-Policy"]
        body = r.text
        for name in (WEIRD, WEIRD_BAD):
            assert name not in body
            assert str(escape(name)) in body
        assert "<script>window.pwned" not in body
        assert ADMIN_KEY not in body
        parsed = _Rows()
        parsed.feed(body)
        assert parsed.models == names
        assert parsed.names == names
        assert parsed.tags.count("script") == 1  # only the page's own
        assert body.count('data-state="unloaded"') == len(names)
        assert 'data-used-mb="0"' in body
    assert requests.get(d.url + "/admin/models", timeout=10).status_code == 401
