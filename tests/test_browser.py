"""Reports as a reader sees them: opened in headless Chromium (Debian's chromium + chromium-driver,
installed by .ci/run), the table is there and every image actually decodes."""

import shutil

import pytest

from tests.studying import run_study
from tests.test_cli import TINY, fedleak
from tests.test_studies import tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Chromium and chromedriver are not installed")

LOADED = "return Array.from(document.images).map(i => [i.className, i.complete && i.naturalWidth > 0]);"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def test_study_report_shows_table_figures_and_image_grid(browser, tmp_path, cifar_root):
    out = tmp_path / "tv"
    run_study(tiny("tv", cifar_root, alphas="[0, 0.01]"), "cpu", out, progress=False)
    browser.get((out / "report.html").as_uri())
    rows = browser.find_elements("css selector", "table#results tr")
    assert len(rows) == 3  # header + one row per α
    header = [th.text for th in rows[0].find_elements("css selector", "th")]
    assert header[:3] == ["alpha", "runs", "psnr"]
    images = browser.execute_script(LOADED)
    kinds = [kind for kind, _ in images]  # one original per attacked image, one reconstruction per run
    assert kinds.count("original") == 2 and kinds.count("reconstruction") == 4 and kinds.count("figure") == 2
    assert all(ok for _, ok in images), images
    grid = browser.find_element("css selector", "table#grid")
    assert [th.text for th in grid.find_elements("css selector", "th.setting")] == ["alpha=0", "alpha=0.01"]
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")  # fits


def test_run_report_shows_summary_and_reconstruction(browser, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out))
    assert code == 0, err
    browser.get((out / "report.html").as_uri())
    summary = browser.find_element("css selector", "table#summary")
    assert "PSNR (dB)" in summary.text and "LPIPS-alex" in summary.text
    assert browser.execute_script(LOADED) == [["original", True], ["reconstruction", True], ["loss-curve", True]]
    shown = browser.execute_script("return Array.from(document.querySelectorAll('figure.pair img'))"
                                   ".map(i => [i.clientWidth, i.clientHeight])")  # the image, without its border
    assert shown == [[128, 128], [128, 128]]  # an 8×8 image, at the report's fixed display size
    assert "mean colour" in browser.find_element("css selector", "table#baselines").text
