"""What a person sees: Dagster's UI in a real browser (Debian's Chromium, driven by Playwright)
against a real dagster-webserver. Materialize one partition with the button, watch the run
succeed, read the partition's metadata; press it again and see the guard's skip on the run.
A failure keeps a screenshot of the page it was on (in ``ARTIFACTS``)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline_tests.defs.membership.conftest import ROOT, add_environment_partition

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (Playwright's own download is not used)
ARTIFACTS = ROOT / ".test-artifacts" / "browser"
RUN_TIMEOUT_MS = 180_000

playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser_page(request: pytest.FixtureRequest) -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        # Dagster's first-visit newsletter prompt covers the page: dismiss it whenever it shows.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda b: b.click())
        yield page
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the page at failure: {shot} ({page.url})")
        browser.close()


def materialize_with_the_button(page: object, base: str, env_key: str) -> str:
    """Asset page → Materialize… → pick the partition → Launch 1 run → the run's page."""
    page.goto(f"{base}/assets/segment_membership_bitmaps")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog").first
    dialog.get_by_text("Select a partition or create one").click()
    search = page.get_by_placeholder("Filter partitions")
    search.fill(env_key)
    # The key in the partition list, not elsewhere: once the partition has been materialized,
    # the asset page behind the dialog shows it in its metadata too (a click there lands on
    # the dialog's overlay). The list is the nearest box around the filter that holds the key.
    listing = search.locator(f'xpath=ancestor::*[.//*[text()="{env_key}"]][1]')
    listing.get_by_text(env_key, exact=True).filter(visible=True).first.click()
    page.keyboard.press("Escape")  # close the partition list, keep the dialog
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_role("link", name="View", exact=True).click()  # the "run launched" toast
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]+$"))
    playwright.expect(page.get_by_text("Success", exact=True).first).to_be_visible(
        timeout=RUN_TIMEOUT_MS
    )
    return page.url.rsplit("/", 1)[1]


def test_materialize_in_the_browser_then_see_the_metadata_and_the_guard(
    webserver, demo_source, browser_page
):
    port, store_url, environment = webserver
    env_key = demo_source.environments[1]["api_key"]
    add_environment_partition(environment["DAGSTER_HOME"], env_key)
    base = f"http://127.0.0.1:{port}"
    page = browser_page
    page.goto(f"{base}/overview")  # a person's first visit: the newsletter prompt, skipped
    with contextlib.suppress(playwright.TimeoutError):
        page.get_by_role("button", name="Skip").click(timeout=15_000)

    first_run = materialize_with_the_button(page, base, env_key)
    with MembershipStore(store_url) as store:
        done = store.metadata(env_key)
        published = store.reader().published(env_key)
        counts = published.segment_counts()
        largest = max(counts, key=counts.get)
        largest_name = published.segment_name(largest)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    assert done.claim_owner == first_run

    # The partition's latest materialization: its version, name and per-segment counts table.
    page.goto(f"{base}/assets/segment_membership_bitmaps?view=partitions&partition={env_key}")
    metadata = page.get_by_text("segment_counts", exact=True).locator("xpath=ancestor::table[1]")
    playwright.expect(metadata).to_contain_text(done.display_name)
    version_row = metadata.locator("tr", has=page.get_by_text("version", exact=True))
    playwright.expect(version_row.first).to_contain_text(str(done.published_version_id))
    largest_row = metadata.locator("tr", has=page.get_by_text(largest_name, exact=True)).last
    playwright.expect(largest_row).to_contain_text(str(counts[largest]))

    # Pressed again within the cooldown: the run succeeds, writes nothing, and says why.
    second_run = materialize_with_the_button(page, base, env_key)
    assert second_run != first_run
    page.get_by_role("button", name="View tags and config").click()
    tags = page.get_by_role("dialog").first
    playwright.expect(tags).to_contain_text("membership/guard")
    playwright.expect(tags).to_contain_text("skipped: cooldown")
    with MembershipStore(store_url) as store:
        assert store.metadata(env_key) == done
