"""Headless Chromium (Debian `chromium` + `chromium-driver`, driven by selenium) chatting through
examples/websocket_chat.py: the page and its WebSocket come from the same port; two windows
exchange messages; a screenshot is kept with the test output."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from support import TIMEOUT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_chat_example():
    spec = importlib.util.spec_from_file_location("websocket_chat", os.path.join(ROOT, "examples",
                                                                                  "websocket_chat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        # .ci/run installs them as root (CI runs as root, so there this test always runs); a
        # plain user who cannot install them still gets every other test, and this says why not.
        hint = "install the Debian packages chromium and chromium-driver (apt-get, as root)"
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.fail(hint)
        pytest.skip(f"no Chromium here and not root: {hint}")
    profile = tempfile.mkdtemp(prefix="pygev-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=900,700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def log_items(driver):
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#log li")]


def say(driver, name, text):
    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "text").send_keys(text)
    driver.find_element(By.ID, "send").click()


def test_two_browser_windows_chat(browser, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="reactor")
    chat = load_chat_example()
    with chat.build_server("127.0.0.1:0") as srv:
        host, port = srv.address[:2]
        page = f"http://{host}:{port}/"
        wait = WebDriverWait(browser, TIMEOUT)
        browser.get(page)
        first = browser.current_window_handle
        wait.until(lambda d: d.find_element(By.ID, "status").text == "connected")
        browser.switch_to.new_window("window")
        second = browser.current_window_handle
        browser.get(page)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "connected")

        say(browser, "bob", "hello from window 2 ✓")
        wait.until(lambda d: "bob: hello from window 2 ✓" in log_items(d))
        browser.switch_to.window(first)
        wait.until(lambda d: "bob: hello from window 2 ✓" in log_items(d))
        say(browser, "alice", "hi bob")
        wait.until(lambda d: log_items(d) == ["bob: hello from window 2 ✓", "alice: hi bob"])
        browser.switch_to.window(second)
        wait.until(lambda d: log_items(d) == ["bob: hello from window 2 ✓", "alice: hi bob"])

        shot = tmp_path / "websocket_chat.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
        print(f"screenshot: {shot}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("reactor")]
