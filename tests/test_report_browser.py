"""The report in a real browser (headless Chromium through selenium), rendered from a small
synthetic tier: the verdict table is on the first screen at 1024x1000, nothing overflows the
page, every link to a data file and every in-page link resolves, ids are unique, figures are
shown at their size (so their 10 pt text stays 10 pt). A screenshot is saved as a test artifact
(GDN_TEST_ARTIFACTS, or the test's temporary directory) and its path printed.

Needs Debian's `chromium` and `chromium-driver` and `selenium` from PyPI (.ci/run installs them);
outside CI the test is skipped, saying so, when they are missing; in CI (CI set) it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest

from tests import report_data

WINDOW = (1024, 1000)


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver (chromedriver)", driver)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        reason = "browser test needs " + ", ".join(missing) + " (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must have them (.ci/run installs them)")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as monkeypatch:
        page = report_data.render_tier(root, monkeypatch)
    return page


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, page: Path):
    browser.set_window_size(*WINDOW)
    browser.get(page.as_uri())
    # The window's outer size includes no chrome in headless mode; make the viewport exactly 1024x1000.
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    if inner != list(WINDOW):
        browser.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
        browser.get(page.as_uri())
    assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == list(WINDOW)


def test_verdict_table_is_on_the_first_screen(browser, report):
    _open(browser, report)
    box = browser.execute_script(
        "const r = document.getElementById('verdict-table').getBoundingClientRect();"
        "return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, right: r.right};")
    assert box["bottom"] <= WINDOW[1], f"verdict table ends at {box['bottom']:.0f} px"
    text = browser.find_element("id", "verdict-table").text
    for expected in ("Transformer + μP", "GDN + μP (gating normalization)", "transfers", "fails", "inconclusive",
                     "125M / 1.5B", "18.2 / 15.1"):
        assert expected in text, expected


def test_nothing_overflows_the_page(browser, report):
    _open(browser, report)
    overflowing = browser.execute_script("""
        const width = document.documentElement.clientWidth;
        const contained = el => {
            for (let p = el.parentElement; p; p = p.parentElement) {
                if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(p).overflowX)) return true;
            }
            return false; };
        const out = [];
        if (document.documentElement.scrollWidth > width) out.push('document ' + document.documentElement.scrollWidth);
        for (const el of document.body.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.right > width + 1 && !contained(el)) out.push(`${el.tagName}#${el.id} ${r.right}`);
        }
        return out.slice(0, 10);""")
    assert overflowing == []


def test_links_resolve_and_ids_are_unique(browser, report):
    _open(browser, report)
    hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    data_links = [h for h in hrefs if h.startswith("data/")]
    assert any(h.endswith("study_verdict.parquet") for h in data_links)
    assert any(h.endswith("verdict_table.csv") for h in data_links)
    for href in set(data_links):
        path = report.parent / href
        assert path.is_file() and path.stat().st_size > 0, href
        if href.endswith(".parquet"):
            duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()
    for anchor in {h[1:] for h in hrefs if h.startswith("#")}:
        assert browser.execute_script("return document.getElementById(arguments[0]) !== null", anchor), anchor
    duplicates = browser.execute_script("""
        const seen = new Map();
        for (const el of document.querySelectorAll('[id]')) seen.set(el.id, (seen.get(el.id) || 0) + 1);
        return [...seen].filter(([, n]) => n > 1).map(([id]) => id).slice(0, 10);""")
    assert duplicates == []
    # A data file opens in the browser too (file:// next to the page).
    csv = next(h for h in data_links if h.endswith("study_verdict.csv"))
    browser.get((report.parent / csv).as_uri())
    assert "variant" in browser.find_element("tag name", "body").text


def test_figures_are_shown_at_their_size(browser, report):
    _open(browser, report)
    sizes = browser.execute_script("""
        return [...document.querySelectorAll('.figure svg')].map(s => {
            const w = s.getAttribute('width'); const pt = parseFloat(w) * (w.endsWith('pt') ? 4 / 3 : 1);
            return [s.closest('section').id, s.getBoundingClientRect().width, pt]; });""")
    assert sizes
    for section, shown, natural in sizes:
        assert shown >= 0.97 * natural, f"a figure in #{section} is scaled to {shown / natural:.2f} of its size"


def test_screenshot(browser, report):
    _open(browser, report)
    out_dir = Path(os.environ.get("GDN_TEST_ARTIFACTS") or report.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_screen = out_dir / "report-first-screen.png"
    assert browser.save_screenshot(str(first_screen))
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WINDOW[0], min(height + 200, 12000))
    full_page = out_dir / "report-full-page.png"
    browser.save_screenshot(str(full_page))
    print(f"screenshots: {first_screen} {full_page}")
    assert first_screen.stat().st_size > 10_000
