"""The MLflow UI, in a real headless Chromium, opens a sweep on its jobs and their reward, KL and METEOR charts."""

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import mlflow_server_process, run_cli

from superhf_lab.launch.sweeps import OVEROPTIMISATION_TITLE, PARENT_FILE
from superhf_lab.metrics.overoptimisation import GOLD, SQRT_KL
from superhf_lab.reporting.summary import sweep_link

pytestmark = pytest.mark.slow


def _chromium():
    """A headless Chromium driven by selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[dev]')")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        options.add_argument(argument)
    options.binary_location = browser
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait_for_text(page, wanted: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = page.find_element("tag name", "body").text
        if all(item in text for item in wanted) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_a_sweeps_link_opens_on_its_three_runs_and_their_reward_kl_and_meteor_charts(tiny_world, tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = run_cli(
        [
            "-m",
            "kl_coef=0,0.1,0.35",
            f"tiny_world.dir={tiny_world.root}",
            "algorithm.num_superbatches=3",
            "algorithm.superbatch_size=4",
            "algorithm.warmup_superbatches=0",
            "eval.at_end=false",
            "eval.every_n_steps=1",
            "eval.prompts_per_source=4",
            "eval.meteor_pairs_per_source=8",
            f"mlflow.tracking_uri={store}",
        ],
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    parent = json.loads(next(Path(tmp_path, "multirun").glob(f"*/*/{PARENT_FILE}")).read_text())
    link = sweep_link(store, parent["experiment_id"], parent["view_key"])
    assert link in sweep.stdout, "the sweep's summary prints the link"

    browser = _chromium()
    with mlflow_server_process(tmp_path / "ui", backend_store_uri=store) as server:
        try:
            browser.get(link.replace("http://127.0.0.1:5000", server))
            lines = [
                f"kl_coef={value} ({metric})"
                for value in ("0", "0.1", "0.35")
                for metric in ("reward/mean", "kl", "diversity/meteor_similarity")
            ]
            path_lines = [f"kl_coef={value} ({GOLD})" for value in ("0", "0.1", "0.35")]
            wanted = [
                "kl_coef=0",
                "kl_coef=0.1",
                "kl_coef=0.35",
                "reward/mean",
                "heldout_reward/mean",
                "kl",
                "diversity/meteor_similarity",
                *lines,
                OVEROPTIMISATION_TITLE,
            ]
            text = _wait_for_text(browser, wanted)
            time.sleep(3)  # the lines draw once each chart's history has arrived
            browser.save_screenshot(str(tmp_path / "sweep.png"))
            # the over-optimisation section's charts draw once scrolled into view
            title = browser.find_element("xpath", f"//*[text()='{OVEROPTIMISATION_TITLE}']")
            browser.execute_script("arguments[0].scrollIntoView();", title)
            path_text = _wait_for_text(browser, [*path_lines, SQRT_KL]).split(OVEROPTIMISATION_TITLE)[1]
            time.sleep(3)
            browser.save_screenshot(str(tmp_path / "overoptimisation.png"))
        finally:
            browser.quit()
    assert (tmp_path / "sweep.png").stat().st_size > 50_000
    assert "4 matching runs" in text and "No data available" not in text, "the runs page, not the GenAI overview"
    for item in wanted:
        assert item in text, f"{item!r} is not on the page the link opens"
    charts = text.split("reward, held-out reward, KL and METEOR similarity")[1].split(OVEROPTIMISATION_TITLE)[0]
    assert all(line in charts for line in lines), "each job's line in each headline chart"
    assert all(line in path_text for line in path_lines), "each job's path of gold reward against sqrt(KL)"
    assert SQRT_KL in path_text, "the over-optimisation chart's x-axis is sqrt(KL), not the step"
