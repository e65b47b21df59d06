"""The Dagster UI in a real browser: `dagster dev` on the project's workspace (session fixture), a
partition materialization launched through the GraphQL API, then the asset lineage graph loaded in
headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium; nothing downloaded).

`STACCHIP_UPDATE_SCREENSHOT=1 python -m pytest tests/e2e/test_ui.py` also refreshes docs/lineage.png.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import DAGSTER_DEV_COLLECTION, PROJECT, require_servers
from tests.support.servers import CHROMEDRIVER, CHROMIUM, item_json

S2 = "sentinel-2-l2a"
ITEM = "S2B_31UEQ_20230704_0_L2A"
NODES = ("stac_items", "chip_index", "combined_index")


@pytest.fixture()
def browser(tmp_path):
    require_servers("chromium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="stacchip-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                 "--metrics-recording-only", f"--user-data-dir={profile}", "--window-size=1600,1000",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    # An explicit driver path: selenium then never runs Selenium Manager (which would download a driver).
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_lineage_graph_in_headless_chromium(dagster_dev_server, stac_api, cog_server, sample_catalog, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = dagster_dev_server
    # an item in the API, then one partition of the item sets materialized through GraphQL
    stac_api.post_item(item_json(sample_catalog, S2, ITEM, DAGSTER_DEV_COLLECTION, cog_server,
                                 updated="2026-03-01T00:00:00Z",
                                 assets=["blue", "green", "red", "nir", "rededge1", "swir16", "scl"]))
    run_id = server.launch_run("stac_items_job", partition_key=DAGSTER_DEV_COLLECTION)
    run = server.wait_for_run(run_id=run_id, timeout=180)
    assert run["tags"]["dagster/partition"] == DAGSTER_DEV_COLLECTION
    listing = server.home / "stacchip" / "item_sets" / f"{DAGSTER_DEV_COLLECTION}.json"
    assert ITEM in listing.read_text()
    # the daemon's sensor indexes the item meanwhile; then the combined index, launched through GraphQL too
    server.wait_for_run(tags={"dagster/partition": f"{DAGSTER_DEV_COLLECTION}/{ITEM}"}, timeout=180)
    server.wait_for_run(run_id=server.launch_run("combined_index_job"), timeout=180)

    # the asset lineage of the code location's group, in a real browser
    browser.get(f"{server.url}/locations/{server.location}/asset-groups/stacchip/lineage")
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    WebDriverWait(browser, 90, poll_frequency=0.5).until(lambda d: all(name in body(d) for name in NODES))
    for name in NODES:  # drawn as nodes of the graph, not only listed somewhere on the page
        assert browser.find_elements(By.XPATH, f"//*[local-name()='foreignObject']//*[normalize-space(text())='{name}']"), name
    # every node has been materialized (stac_items and combined_index through GraphQL, chip_index by the sensor)
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: "Never materialized" not in body(d) and "Materializing" not in body(d) and "Latest event" in body(d))
    shot = tmp_path / "lineage.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("STACCHIP_UPDATE_SCREENSHOT"):
        (PROJECT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, PROJECT / "docs" / "lineage.png")
