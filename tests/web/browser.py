"""Debian's chromium, headless, driven by selenium through Debian's chromedriver (nothing downloaded)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


class Browser:
    """One browser with a fresh profile; ``shot`` saves a full-page screenshot of the current page."""

    def __init__(self, base_url: str, shots: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-")
        options.add_argument(f"--user-data-dir={self.profile.name}")
        self.driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        self.driver.set_page_load_timeout(120)
        self.base_url = base_url
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def fill(self, name: str, value: str) -> None:
        field = self.driver.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)

    def click(self, css: str) -> None:
        """Click the element; found again once when chromedriver answers that the node it found left the
        document (a race of its inspector with a page still settling, seen under load)."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        try:
            self.driver.find_element(By.CSS_SELECTOR, css).click()
        except (StaleElementReferenceException, WebDriverException) as exc:
            if "does not belong to the document" not in str(exc) and not isinstance(
                    exc, StaleElementReferenceException):
                raise
            self.driver.find_element(By.CSS_SELECTOR, css).click()

    def submit(self, css: str) -> None:
        """Click a submit button or link and wait until the next page has replaced this one."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.click(css)
        WebDriverWait(self.driver, 60).until(lambda _: _left_the_document(old))
        WebDriverWait(self.driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def html(self) -> str:
        return self.driver.page_source

    def problem(self, name: str) -> str:
        """The validation message shown next to the field ``name`` ('' when none)."""
        found = self.driver.find_elements(By.ID, f"{name}-problem")
        return found[0].text if found else ""

    def login(self, name: str, password: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/login")
        self.fill("name", name)
        self.fill("password", password)
        self.submit("form[action='/login'] button")

    def shot(self, name: str) -> Path:
        """A full-page PNG of the current page (through the DevTools protocol), saved as ``<shots>/<name>.png``."""
        import base64

        self.driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        image = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}})
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(image["data"]))
        return path

    def cookie(self, name: str) -> str | None:
        cookie = self.driver.get_cookie(name)
        return cookie["value"] if cookie else None

    def quit(self) -> None:
        self.driver.quit()
        self.profile.cleanup()


def _left_the_document(element) -> bool:
    """True once ``element`` is gone from the page (the next page has replaced it). Chromedriver answers either
    a stale element reference or, when its inspector asks about the node in that instant, "does not belong to
    the document" (seen under load): both say the node left."""
    from selenium.common.exceptions import WebDriverException

    try:
        return staleness_of(element)(None)
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


@contextmanager
def browser_for(url: str, tmp_path_factory) -> Iterator[Browser]:
    """A browser on ``url``, screenshots in ``$SPINE_GATEWAY_SHOTS`` or a fresh folder of the run; quit at the end."""
    browser = Browser(url, Path(os.environ.get("SPINE_GATEWAY_SHOTS") or tmp_path_factory.mktemp("shots")))
    try:
        yield browser
    finally:
        browser.quit()
