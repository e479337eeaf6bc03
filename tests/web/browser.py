"""Debian's chromium, headless, driven by selenium through Debian's chromedriver (nothing downloaded)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
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
        self.driver.find_element(By.CSS_SELECTOR, css).click()

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
        self.click("form[action='/login'] button")
        WebDriverWait(self.driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "form.signout, p.error"))

    def shot(self, name: str) -> Path:
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1280, min(max(int(height), 700), 4000))
        self.driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1280, 1000)
        return path

    def cookie(self, name: str) -> str | None:
        cookie = self.driver.get_cookie(name)
        return cookie["value"] if cookie else None

    def quit(self) -> None:
        self.driver.quit()
        self.profile.cleanup()
