"""The quick profile's HTML report (results/report.html) opened in a real browser: Debian's headless
Chromium driven through Selenium and chromedriver (`apt-get install chromium chromium-driver`;
tests/cluster/cluster.sh-style install below when they are missing and we are root).

Snakemake's report is one self-contained HTML file whose JavaScript builds the page; reading the file's
text (tests/test_workflow.py) does not show whether it displays. Here the page must load without a
console error, list every result, show each figure as a decoded, non-blank image, and offer the summary
table with the content of results/summary.csv. `metalearn aggregate` writes no HTML of its own
(summary.csv/.md, paper.csv/.md, PNG figures), so the report is the only page to check.
"""
from __future__ import annotations

import base64
import io
import os
import time
from urllib.parse import unquote

import pytest

from debian import apt_install

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _install_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.geteuid() != 0:
        pytest.fail("Chromium is missing: apt-get install chromium chromium-driver (CI installs them as root)")
    done = apt_install("chromium", "chromium-driver")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def browser():
    _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium's sandbox cannot start as root in a container
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {condition.__doc__ or condition}")


def _pixel_spread(png: bytes, box: dict | None = None) -> float:
    """Standard deviation of the grey levels of a PNG (or of `box` in it): 0 for a blank image."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    if box is not None:
        image = image.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    return float(np.asarray(image, dtype=float).std())


def test_the_quick_profiles_report_renders_in_chromium(quick_run, browser, capsys):
    from selenium.webdriver.common.by import By

    results = quick_run.results
    report = results / "report.html"
    # The run's figures (tests/test_workflow.py checks they are the ones params.yaml asks for), in the
    # report's categories as workflow/rules/results.smk files them: <benchmark>-<kind>.png, Studies.
    plots = sorted(p.name for p in (results / "plots").glob("*.png"))
    figures = plots + sorted(p.name for p in (results / "studies").glob("*.png"))
    assert plots and len(figures) > len(plots)

    browser.get(report.as_uri())
    _wait(lambda: browser.find_elements(By.XPATH, "//span[normalize-space(text())='Summary']"))
    # Every category of workflow/rules/results.smk is in the menu.
    categories = {"Summary", "Paper vs ours", "Studies", *(name.rsplit("-", 1)[0] for name in plots)}
    menu = {e.text.strip() for e in browser.find_elements(By.XPATH, "//span")}
    assert categories <= menu, categories - menu

    def open_category(name):
        """The report's page for one category of results (from the start page, as a reader would)."""
        browser.get(report.as_uri())
        _wait(lambda: browser.find_elements(By.XPATH, f"//span[normalize-space(text())='{name}']"))[0].click()

    # The summary table: its entry offers exactly results/summary.csv.
    open_category("Summary")
    link = _wait(lambda: browser.find_elements(
        By.XPATH, "//td[normalize-space(text())='summary.csv']/..//a[@iconname='eye']"))[0]
    href = link.get_attribute("href")
    assert href.startswith("data:text/csv"), href[:80]
    assert base64.b64decode(unquote(href.split("base64,", 1)[1])) == (results / "summary.csv").read_bytes()

    # Each figure: its eye button shows it in the page, decoded by the browser and not blank.
    shown = {}
    for category in sorted(categories - {"Summary", "Paper vs ours"}):
        open_category(category)
        eyes = _wait(lambda: browser.find_elements(By.XPATH, "//a[@iconname='eye']"))
        for number in range(len(eyes)):
            browser.find_elements(By.XPATH, "//a[@iconname='eye']")[number].click()

            def figure_displayed():
                for img in browser.find_elements(By.XPATH, "//img[starts-with(@src, 'data:image/png')]"):
                    name = img.get_attribute("src").split("filename=", 1)[1].split(";", 1)[0]
                    if name not in shown and browser.execute_script(
                            "return arguments[0].complete && arguments[0].naturalWidth > 0", img):
                        return name, img
                return None
            name, img = _wait(figure_displayed)
            screenshot = browser.get_screenshot_as_png()
            scale = browser.execute_script("return window.devicePixelRatio")
            box = {k: int(v * scale) for k, v in {**img.location, **img.size}.items()}
            box = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}
            assert box["width"] > 100 and box["height"] > 100, (name, box)
            shown[name] = _pixel_spread(screenshot, box)
            if name == figures[0]:
                kept = screenshot
    assert sorted(shown) == sorted(figures)
    assert all(spread > 10 for spread in shown.values()), shown  # a blank (one-colour) image: 0

    # The screenshot of a figure in the report: a test artifact beside the report.
    artifact = results / "report-screenshot.png"
    artifact.write_bytes(kept)
    with capsys.disabled():
        print(f"\nreport screenshot (a figure in results/report.html): {artifact}")
    # No console error (Snakemake's page logs one warning: its inlined Tailwind CSS build).
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
