"""The web UI end to end in headless Chromium: the form starts a job whose nodes arrive live, the final answer and
a trace's tail show, a dropped event stream resumes with nothing lost or doubled, another tenant's job stays out of
reach, and cancel works. Screenshots land in docs/screenshots/ (the README shows one)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import KEY_B
from tests.web.conftest import LiveUI, open_page, screenshot
from tests.web.proxy import CuttingProxy

SMALL = {"trace_tokens": 300, "tail_tokens": 60, "final_tokens": 300}
PROBLEM = "Multiply 6 by 7 and add nothing. ANSWER=42"


def create(ui: LiveUI, **params: Any) -> str:
    with ui.api() as client:
        response = client.post("/v1/jobs", json={"problem": PROBLEM, "backend": "toy", **SMALL, **params})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def positions(page: Any) -> list[tuple[int, int]]:
    found = page.eval_on_selector_all("g.node", "ns => ns.map(n => [n.dataset.round, n.dataset.slot])")
    return [(int(r), int(s)) for r, s in found]


def wait_status(page: Any, status: str) -> None:
    page.wait_for_selector(f"#job[data-status={status}]", state="attached")


def test_a_job_from_the_form_runs_live_and_shows_its_answer_and_tails(browser: Any, live_ui: LiveUI) -> None:
    page = open_page(browser)
    page.goto(f"{live_ui.url}/")
    page.wait_for_selector("#f-backend option[value=toy]", state="attached")
    page.fill("#f-problem", PROBLEM)
    for name, value in {"population": "2", "subset": "3", "rounds": "2", **SMALL}.items():
        page.fill(f"#f-{name}", str(value))
    page.click("#submit")
    error = page.wait_for_selector("#e-subset:not([hidden])")
    assert "at most population" in error.inner_text()
    assert page.get_attribute("#f-subset", "aria-invalid") == "true"
    assert page.is_hidden("#e-population")

    page.fill("#f-population", "6")
    page.fill("#f-subset", "3")
    page.fill("#f-rounds", "6")  # seven stages of 0.6 s: the page is up long before the last one
    page.click("#submit")
    page.wait_for_url("**/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[1]
    wait_status(page, "completed")
    with live_ui.api() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        tail = client.get(f"/v1/jobs/{job_id}/steps/r1:s2").json()
    page.wait_for_selector("#job[data-nodes='42']", state="attached")
    found = positions(page)
    assert sorted(found) == [(r, s) for r in range(7) for s in range(6)]
    assert int(page.get_attribute("#job", "data-step-events") or 0) > 0  # nodes arrived over the stream
    assert page.inner_text("#final-answer") == job["result"]["answer"]
    legend = page.inner_text("#legend")
    assert job["result"]["answer"] in legend
    screenshot(page, "job-finished", full_page=True)

    page.click("g.node[data-round='1'][data-slot='2']")
    page.wait_for_selector("#detail[data-position='r1:s2']")
    lit = page.eval_on_selector_all("g.node.hl[data-round='0']", "ns => ns.map(n => Number(n.dataset.slot))")
    assert sorted(lit) == sorted(tail["candidates"])  # its ancestors lit, the other round-0 traces not
    assert page.inner_text("#detail-source mark.tail") == tail["tail"]
    chips = page.eval_on_selector_all("#detail-candidates .chip", "cs => cs.map(c => c.dataset.key)")
    assert chips == [f"0:{c}" for c in tail["candidates"]]
    screenshot(page, "node-detail", full_page=True)

    page.focus("#graph")  # keyboard: the selection moves with the arrows, Enter opens it
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[data-position='r2:s3']")

    page.goto(f"{live_ui.url}/")
    row = page.wait_for_selector(f"tr[data-job-id='{job_id}']")
    assert "Completed" in row.inner_text() and PROBLEM[:20] in row.inner_text()
    screenshot(page, "job-list")
    page.select_option("#status-filter", "queued")
    page.wait_for_selector(f"tr[data-job-id='{job_id}']", state="detached")
    page.select_option("#status-filter", "completed")
    page.wait_for_selector(f"tr[data-job-id='{job_id}']")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "job-list-phone", full_page=True)


def test_a_dropped_event_stream_resumes_with_no_node_lost_or_doubled(browser: Any, live_ui: LiveUI) -> None:
    port = int(live_ui.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port)
    try:
        job_id = create(live_ui, population=4, subset=2, rounds=6)  # running for seconds after the cut
        page = open_page(browser)
        page.goto(f"{proxy.url}/jobs/{job_id}")
        page.wait_for_function("() => Number(document.getElementById('job').dataset.stepEvents) >= 4")
        assert proxy.cut_event_streams() >= 1
        wait_status(page, "completed")
        page.wait_for_selector("#job[data-nodes='28']", state="attached")
        found = positions(page)
        assert len(found) == len(set(found)) == 28
        probe = page.evaluate("({c: window.rsaJob.connections, d: window.rsaJob.duplicates})")
        assert probe["c"] >= 2 and probe["d"] == 0
        resumed = proxy.event_requests()[1].lower()
        assert b"last-event-id: " in resumed
    finally:
        proxy.close()


def test_another_tenants_job_is_not_reachable(browser: Any, live_ui: LiveUI) -> None:
    job_id = create(live_ui, population=2, subset=1, rounds=0)
    page = open_page(browser, key=None)
    page.goto(f"{live_ui.url}/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", KEY_B)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#jobs-empty:not([hidden])")
    assert page.query_selector(f"tr[data-job-id='{job_id}']") is None
    page.goto(f"{live_ui.url}/jobs/{job_id}")
    wait_status(page, "missing")
    assert "No job" in page.inner_text("#job-error")
    assert positions(page) == []


def test_cancel_from_the_job_page(browser: Any, live_ui: LiveUI) -> None:
    job_id = create(live_ui, population=6, subset=3, rounds=8)
    page = open_page(browser)
    page.goto(f"{live_ui.url}/jobs/{job_id}")
    page.wait_for_function(
        "() => { const j = document.getElementById('job');"
        " return j.dataset.status === 'in_progress' && Number(j.dataset.nodes) >= 9; }"
    )
    screenshot(page, "job-running", full_page=True)
    page.click("#cancel")
    wait_status(page, "cancelled")
    assert page.is_hidden("#cancel")
    with live_ui.api() as client:
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen but the graph
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "job-phone", full_page=True)
    page.emulate_media(media="print")  # print: the job without the navigation and buttons
    assert page.is_hidden("header.top") and page.is_visible("#graph")
    screenshot(page, "job-print", full_page=True)


def test_traces_without_an_answer_get_a_neutral_labelled_mark(browser: Any, live_ui: LiveUI) -> None:
    cut_short = {"trace_tokens": 30, "tail_tokens": 20, "final_tokens": 30}  # stops before any boxed answer
    job_id = create(live_ui, population=3, subset=1, rounds=0, **cut_short)
    page = open_page(browser)
    page.goto(f"{live_ui.url}/jobs/{job_id}")
    wait_status(page, "completed")
    page.wait_for_selector("#job[data-nodes='3']", state="attached")
    assert len(page.query_selector_all("g.node.none.truncated")) == 3
    legend = " ".join(page.inner_text("#legend").split())
    assert "no answer ×3" in legend and "truncated by the budget (dashed ring) ×3" in legend
