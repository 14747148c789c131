"""The live view in a real browser: Debian's headless Chromium, driven by Selenium.

A real helixd with two echo models (RAM-only here: the bar is host RAM's); the page must
follow a load made with ``helixctl`` without being reloaded (the row's state, the memory
bar), unload a model from its own button and dialog, follow a model's log, ask for the
key when helixd wants one, and log no console errors. Screenshots go to
``tests/artifacts/`` (``HELIXD_UPDATE_SCREENSHOT=1`` also refreshes the README's).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_real_provider
from tests.e2e.gpu_host import FakeGpuHost
from tests.e2e.test_proxy import echo_models, post

webdriver = import_real_provider("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
README_SHOT = REPO / "tests" / "e2e" / "screenshots" / "live-view.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY = "sk-live-view-0123456789"
WAIT_S = 30


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium; a missing browser fails where the run demands real parts."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        why = "Debian's chromium and chromium-driver are not installed (make test installs them)"
        if os.environ.get("HELIXD_TEST_REAL_PROVIDERS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1000"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, what: str, check: Callable[[Any], Any]) -> Any:
    """Poll ``check`` until it returns something true (deadline: ``WAIT_S``)."""

    def attempt(d: Any) -> Any:
        try:
            return check(d)
        except WebDriverException:
            return False  # a row re-rendered between find and read: look again

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(attempt, f"waiting for {what}")


def state_of(driver: Any, model: str) -> str:
    cell = driver.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"] td.state')
    return str(cell.text)


def segment_width(driver: Any, device: str, model: str) -> float:
    found = driver.find_elements(
        By.CSS_SELECTOR, f'.bar[data-device="{device}"] .segment[data-segment="{model}"]'
    )
    return float(found[0].size["width"]) if found and found[0].is_displayed() else 0.0


def console_errors(driver: Any) -> list[str]:
    """The page's own errors (a 401 the page expects shows as a network entry: not ours)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]


def shoot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def click_and_confirm(driver: Any, action: str, target: str) -> None:
    selector = f'button[data-action="{action}"][data-target="{target}"]'
    wait(driver, f"the {action} button", lambda d: d.find_element(By.CSS_SELECTOR, selector))
    driver.find_element(By.CSS_SELECTOR, selector).click()
    wait(driver, "the confirm dialog", lambda d: d.find_element(By.ID, "confirm").is_displayed())
    assert target in driver.find_element(By.ID, "confirm").text
    driver.find_element(By.ID, "confirm-yes").click()


def test_the_page_follows_helixd_live(helix: Any, browser: Any) -> None:
    h = helix(echo_models("tiny", "small", ram_mib=700))
    browser.get(h.proxy_url + "/ui/")
    wait(
        browser,
        "the feed",
        lambda d: "up" in d.find_element(By.ID, "connection").get_attribute("class"),
    )
    wait(browser, "both rows", lambda d: state_of(d, "tiny") == "unloaded" == state_of(d, "small"))

    # A load made elsewhere (helixctl) shows without reloading the page.
    marker = browser.execute_script("return window.performance.timeOrigin")
    assert h.ctl("load", "tiny").returncode == 0
    wait(browser, "tiny loaded", lambda d: state_of(d, "tiny").startswith("loaded"))
    wait(browser, "tiny's share of RAM", lambda d: segment_width(d, "ram", "tiny") > 0)
    assert segment_width(browser, "ram", "small") == 0
    assert browser.execute_script("return window.performance.timeOrigin") == marker

    # Requests to the endpoint show in the tail as they finish.
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(3):
        assert post(h, "/v1/chat/completions", body.encode())[0] == 200
    wait(
        browser,
        "the requests",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#requests tbody tr")) == 3,
    )
    shot = shoot(browser, "live-view")
    if os.environ.get("HELIXD_UPDATE_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SHOT)

    # Follow the model's log: the start note is there, its command line included.
    browser.find_element(By.CSS_SELECTOR, 'button[data-log="tiny"]').click()
    wait(browser, "the log panel", lambda d: d.find_element(By.ID, "log-panel").is_displayed())
    wait(
        browser, "the start note", lambda d: "started pid" in d.find_element(By.ID, "log-view").text
    )
    shoot(browser, "live-view-log")

    # Unload from the page, confirmed in its dialog; helixd agrees.
    click_and_confirm(browser, "unload", "tiny")
    wait(browser, "tiny unloaded", lambda d: state_of(d, "tiny") == "unloaded")
    wait(browser, "the bar to shrink", lambda d: segment_width(d, "ram", "tiny") == 0)
    assert h.status()["models"][0]["state"] == "unloaded"
    wait(browser, "the toast", lambda d: "tiny" in d.find_element(By.ID, "toast").text)
    wait(browser, "the log's end", lambda d: "ended" in d.find_element(By.ID, "log-view").text)
    shoot(browser, "live-view-unloaded")
    assert console_errors(browser) == []


def test_a_pinned_model_offers_unpin_and_unpins(helix: Any, browser: Any) -> None:
    h = helix(echo_models("tiny", ram_mib=100))
    assert h.ctl("pin", "tiny").returncode == 0
    browser.get(h.proxy_url + "/ui/")
    wait(browser, "tiny pinned", lambda d: state_of(d, "tiny").startswith("loaded"))
    # A pinned model cannot be unloaded: the page offers unpin instead.
    unload = browser.find_elements(
        By.CSS_SELECTOR, 'button[data-action="unload"][data-target="tiny"]'
    )
    assert not unload or not unload[0].is_displayed()
    click_and_confirm(browser, "unpin", "tiny")
    wait(browser, "the unpin toast", lambda d: "unpinned" in d.find_element(By.ID, "toast").text)
    assert h.status()["models"][0]["pinned"] is False
    assert console_errors(browser) == []


def test_with_keys_the_page_asks_for_one(helix: Any, browser: Any) -> None:
    h = helix(echo_models("tiny"), proxy=f'api_keys = ["{KEY}"]')
    browser.get(h.proxy_url + "/ui/")
    wait(browser, "the login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-model="tiny"]') == []
    browser.find_element(By.ID, "login-key").send_keys(KEY)
    browser.find_element(By.ID, "login-submit").click()
    wait(browser, "the models", lambda d: state_of(d, "tiny") == "unloaded")
    assert KEY not in browser.current_url
    stored = browser.execute_script("return sessionStorage.getItem('helixd-key')")
    assert stored == KEY
    assert browser.execute_script("return localStorage.length") == 0
    shoot(browser, "live-view-after-login")
    assert console_errors(browser) == []


def test_a_swap_on_the_gpu_shows_in_the_bar(helix: Any, browser: Any, tmp_path: Path) -> None:
    """A 24 GiB card (the fake NVML) and three 8 GiB models: loading the third evicts the
    least recently used one, and the page shows the card's bar change hands."""
    gpu = FakeGpuHost(tmp_path)
    config = gpu.provider() + "".join(gpu.model(n, 8192) for n in ("alpha", "beta", "gamma"))
    h = helix(config, extra_env=gpu.env())
    browser.get(h.proxy_url + "/ui/")
    for name in ("alpha", "beta"):
        assert h.ctl("load", name, timeout=90).returncode == 0
        wait(browser, f"{name} on gpu0", lambda d, n=name: segment_width(d, "gpu0", n) > 0)
    alpha, beta = segment_width(browser, "gpu0", "alpha"), segment_width(browser, "gpu0", "beta")
    assert alpha == pytest.approx(beta, rel=0.05)  # the same size, the same share of the bar
    wait(browser, "alpha next to go", lambda d: cell_text(d, "alpha", "evict") == "next")
    assert h.ctl("load", "gamma", timeout=90).returncode == 0
    wait(browser, "alpha evicted", lambda d: state_of(d, "alpha") == "unloaded")
    wait(browser, "gamma on gpu0", lambda d: segment_width(d, "gpu0", "gamma") > 0)
    wait(browser, "alpha off the bar", lambda d: segment_width(d, "gpu0", "alpha") == 0)
    assert "evicted" in cell_text(browser, "alpha", "message")
    shot = shoot(browser, "live-view-gpu-swap")
    if os.environ.get("HELIXD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, README_SHOT.with_name("live-view-gpu.png"))
    assert console_errors(browser) == []


def cell_text(driver: Any, model: str, column: str) -> str:
    cell = driver.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"] td.{column}')
    return str(cell.text)
