"""The Airflow 3.3 UI in a real browser: Debian's headless Chromium driven by selenium (chromium-driver).

Logs in, then checks what a user watching the pipeline relies on: the grid and graph views list every
task, the mapped `score` task shows its shard labels, and the DAG docs render as a list and a table (not
as one line of ASCII art). Every view is saved as a PNG; a missing element fails with the screenshot named.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1600,1000",
)
WAIT_S = 90


def chromium_driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    return driver


class Page:
    """One browser session against the UI, saving a screenshot per view."""

    def __init__(self, driver, base_url: str, screenshots: Path) -> None:
        self.driver, self.base_url, self.screenshots = driver, base_url.rstrip("/"), screenshots

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def shot(self, name: str) -> Path:
        target = self.screenshots / f"{name}.png"
        self.driver.save_screenshot(str(target))
        return target

    def text(self) -> str:
        return self.driver.find_element("tag name", "body").text

    def wait_until(self, what: str, shot: str, condition: Callable[[], bool]) -> None:
        """Poll `condition` until true; on timeout save the screenshot and fail naming what is missing."""
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if condition():
                    self.shot(shot)
                    return
            except WebDriverException:  # the page is still rendering (stale or absent element)
                pass
            if time.monotonic() > deadline:
                path = self.shot(shot + "-MISSING")
                raise AssertionError(f"UI: {what} not shown after {WAIT_S}s (screenshot {path}); page text:\n"
                                     f"{self.text()[:3000]}")
            time.sleep(1)

    def shows_all(self, words: Iterable[str]) -> Callable[[], bool]:
        return lambda: all(w in self.text() for w in words)


def login(page: Page, username: str, password: str) -> None:
    page.open("/")
    page.wait_until("the login form", "01-login", lambda: page.driver.find_elements("name", "username"))
    page.driver.find_element("name", "username").send_keys(username)
    page.driver.find_element("name", "password").send_keys(password)
    page.driver.find_element("xpath", "//button[@type='submit']").click()
    page.wait_until("the home page after login", "02-home", lambda: "login" not in page.driver.current_url)


def check_ui(base_url: str, username: str, password: str, *, dag_id: str, run_id: str, tasks: set[str],
             shards: int, screenshots: Path) -> None:
    screenshots.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="recsys-chromium-"))
    driver = chromium_driver(profile)
    try:
        page = Page(driver, base_url, screenshots)
        login(page, username, password)

        page.open(f"/dags/{dag_id}/runs/{run_id}")
        page.wait_until("the grid view with every task", "03-grid", page.shows_all(sorted(tasks)))

        page.wait_until("the graph view toggle", "04-graph-toggle",
                        lambda: driver.find_elements("xpath", "//button[contains(@aria-label, 'Show Graph')]"))
        driver.find_element("xpath", "//button[contains(@aria-label, 'Show Graph')]").click()
        page.wait_until("the graph view with every task", "05-graph",
                        lambda: driver.find_elements("css selector", ".react-flow__node")
                        and all(t in page.text() for t in tasks))

        page.open(f"/dags/{dag_id}/runs/{run_id}/tasks/score/mapped")
        labels = [f"shard {i}" for i in range(shards)]
        page.wait_until("the mapped score instances with their shard labels", "06-score-shards",
                        page.shows_all(labels))

        page.open(f"/dags/{dag_id}")
        docs_button = "//button[@aria-label='Dag Docs' or normalize-space(.)='Dag Docs']"
        page.wait_until("the Dag Docs button", "07-dag", lambda: driver.find_elements("xpath", docs_button))
        driver.find_element("xpath", docs_button).click()
        # Rendered markdown: the flow as a list, the task table as a table, no raw markdown left.
        page.wait_until("the DAG docs rendered as a list and a table", "08-dag-docs", lambda: (
            driver.find_elements("xpath", "//li[contains(., 'generate_data') and contains(., 'transform')]")
            and driver.find_elements("xpath", "//table//td[contains(., 'collect_scores')]")
            and "|---|" not in page.text()
        ))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
