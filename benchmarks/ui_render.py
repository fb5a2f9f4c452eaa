"""The job page in headless Chromium: how long a 576-node job (N=64, K=4, T=8) takes to draw, and what a live
update costs.

Starts the test model server, a scratch Redis and `rsa serve` (auth on), runs one job to completion, then opens its
page `--repeats` times in fresh browser contexts (the first one a warm-up):

- page: navigation start to the first frame after the graph, charts and legend are in the DOM (HTML, scripts, the
  job and graph requests, the drawing);
- draw: from the API responses' arrival to that frame (the DOM built, styled, laid out and painted); build: the
  script's part of it;
- api: the slower of the page's two API requests (the graph: every step read, its answers clustered);
- highlight: selecting a last-round node's lineage (hover) and clearing it.

Then a second job is watched live from its start, each frame's batch of new nodes timed (the graph only appends).

    .venv/bin/python benchmarks/ui_render.py [--repeats 5] [--population 64] [--rounds 8] [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import services
from tests.modelserver import ModelServerConfig
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

KEY = "bench-key-0123456789"
SPEC = {"subset": 4, "trace_tokens": 400, "tail_tokens": 60, "final_tokens": 400}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("rsa serve did not come up")


def create(client: httpx2.Client, population: int, rounds: int) -> str:
    body = {"problem": "Benchmark problem. ANSWER=42", "backend": "toy", "population": population, "rounds": rounds}
    response = client.post("/v1/jobs", json=body | SPEC)
    response.raise_for_status()
    return str(response.json()["id"])


def finish(client: httpx2.Client, job_id: str) -> None:
    while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.3)


def measure(
    url: str, job_id: str, repeats: int, start_live: Callable[[], str] | None, shot: Path | None
) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages, draws, builds, apis, highlights, nodes = [], [], [], [], [], 0
        for _ in range(repeats + 1):  # the first warms the server and the browser's caches up
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(f"localStorage.setItem('rsa.apiKey', {KEY!r})")
            page = context.new_page()
            page.goto(f"{url}/jobs/{job_id}")
            page.wait_for_selector("#job[aria-busy=false]", state="attached", timeout=60_000)
            probe = page.evaluate(
                "(() => { const api = performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/'));"
                " const fetched = Math.max(...api.map(e => e.responseEnd));"
                " return {page: rsaJob.paintedAt, draw: rsaJob.paintedAt - fetched, build: rsaJob.buildMs,"
                " api: Math.max(...api.map(e => e.duration)), nodes: rsaJob.graph.nodes.size}; })()"
            )
            highlight = page.evaluate(
                "(() => { const g = rsaJob.graph; const key = [...g.nodes.keys()].pop();"
                " const t = performance.now(); g.highlight(key); g.highlight(null); return performance.now() - t; })()"
            )
            pages.append(probe["page"])
            draws.append(probe["draw"])
            builds.append(probe["build"])
            apis.append(probe["api"])
            highlights.append(highlight)
            nodes = probe["nodes"]
            if shot is not None:
                page.screenshot(path=str(shot), full_page=True)
            context.close()
        live = None
        if start_live is not None:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(f"localStorage.setItem('rsa.apiKey', {KEY!r})")
            page = context.new_page()
            page.goto(f"{url}/jobs/{start_live()}")
            page.wait_for_selector("#job[data-status=completed]", state="attached", timeout=300_000)
            flushes = page.evaluate("rsaJob.flushes")
            per_node = [f["ms"] / f["nodes"] for f in flushes]
            live = {
                "batches": len(flushes),
                "nodes": sum(f["nodes"] for f in flushes),
                "batch_ms_median": round(statistics.median(f["ms"] for f in flushes), 2),
                "batch_ms_max": round(max(f["ms"] for f in flushes), 2),
                "ms_per_node_median": round(statistics.median(per_node), 3),
            }
        browser.close()
    return {
        "nodes": nodes,
        "page_ms_median": round(statistics.median(pages[1:]), 1),
        "page_ms_max": round(max(pages[1:]), 1),
        "draw_ms_median": round(statistics.median(draws[1:]), 1),
        "build_ms_median": round(statistics.median(builds[1:]), 1),
        "api_ms_median": round(statistics.median(apis[1:]), 1),
        "highlight_ms_median": round(statistics.median(highlights[1:]), 2),
        "live": live,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-live", action="store_true", help="Skip the live-update measurement.")
    parser.add_argument("--screenshot", type=Path, help="Save the finished job's page here.")
    args = parser.parse_args()
    with services(ModelServerConfig(reasoning_words=40, latency_ms=20)) as (redis_url, model, scratch):
        port = free_port()
        env = {
            **os.environ,
            "RSA_REDIS_URL": redis_url,
            "RSA_BACKENDS": json.dumps({"toy": f"openai:{model.base_url}"}),
            "RSA_API_KEYS": KEY,
            "RSA_WORKER_CONCURRENCY": "64",
        }
        argv = [sys.executable, "-m", "rsa_service.cli", "serve", "--port", str(port), "--log-level", "warning"]
        with open(scratch / "serve.log", "w") as log:
            server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url)
            with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
                job_id = create(client, args.population, args.rounds)
                finish(client, job_id)
                live = None if args.no_live else (lambda: create(client, args.population, args.rounds))
                print(json.dumps(measure(url, job_id, args.repeats, live, args.screenshot)))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
