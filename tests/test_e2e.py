"""The smoke profile end to end through `make reproduce`, interrupted in iteration 2 and resumed,
then its HTML reports opened in headless Chromium. Slow: a few minutes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import make
from playwright.sync_api import sync_playwright

from scoder_lib.core.hashing import sha256_file
from scoder_lib.core.params import load_config
from scoder_lib.core.run import MARKER, Run

pytestmark = pytest.mark.slow


def _make(out: Path) -> subprocess.Popen:
    return make("reproduce", outputs=out, profile="smoke", run="e2e", popen=True)


def _contents(run: Path) -> dict[str, str]:
    """Every file of a run (links not followed) by its sha256."""
    return {str(p.relative_to(run)): sha256_file(p) for p in run.rglob("*") if p.is_file() and not p.is_symlink()}


def _markers(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime for p in run.rglob(MARKER)}


def _marker(run: Path, rel: str) -> dict:
    return json.loads((run / rel).read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run smoke, interrupt it once iteration 2 has started, check nothing half-done counts, resume."""
    out = tmp_path_factory.mktemp("outputs")
    run = out / "e2e"
    first = _make(out)
    started = time.monotonic()
    while not (run / "iter_2" / "03_sample_score").exists() and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the middle of iteration 2
    log1 = first.communicate(timeout=300)[0]
    assert first.returncode != 0, log1[-3000:]
    before = _markers(run)
    assert "iter_1/04_influence/_SUCCESS.json" in before and "iter_2/03_sample_score/_SUCCESS.json" not in before
    second = _make(out)
    log2 = second.communicate(timeout=900)[0]
    wall = time.monotonic() - started
    print(f"smoke profile: {wall:.0f} s wall for both invocations")
    return run, before, log2, second.returncode


def test_smoke_completes_after_resume(smoke_run):
    run, before, log, rc = smoke_run
    assert rc == 0, log[-4000:]
    after = _markers(run)
    expected = len(Run("e2e", "smoke", load_config("smoke")).instances)
    assert len(after) == expected
    # finished stages were not redone: their markers are untouched
    assert all(after[k] == v for k, v in before.items())
    assert "up to date: 01_preprocess, 02_seed, 03_sample_score@1, 04_influence@1" in log
    # every stage read only config sections its settings hash (or an earlier stage's) covers
    markers = {k: _marker(run, k) for k in after}
    assert not {k: m["config_reads_outside_hash"] for k, m in markers.items() if "config_reads_outside_hash" in m}
    metrics = json.loads((run / "06_evaluate" / "metrics.json").read_text())
    assert metrics["models"] >= 1 and (run / "reports" / "index.html").exists()


@pytest.mark.browser
def test_reports_open_in_chromium_without_errors(smoke_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    run = smoke_run[0]
    pages = [run / "reports" / "index.html", run / "reports" / "03_sample_score_iter1.html"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        for page_path in pages:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m, seen=problems: seen.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, seen=problems: seen.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.naturalWidth, e.naturalHeight])")
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            assert not problems, (page_path.name, problems)
            assert images and all(w > 0 and h > 0 for _, w, h in images), (page_path.name, images)
            for href in links:
                url = urlparse(href)
                if url.scheme == "file":
                    target = Path(unquote(url.path))
                    assert target.is_file() and run in target.parents, href
            page.close()
        browser.close()


def test_an_ablation_run_takes_the_method_runs_stages_through_make(smoke_run, tmp_path):
    """What an ablation arm's sub-make does (`make synthesizer ... SHARE_FROM=<the method run>`), for a
    no-influence ablation of the smoke run: 01, 02 and 03@1 are the method run's files, 04@1 onward its own."""
    run, *_ = smoke_run
    profile = tmp_path / "smoke_noinfluence.yaml"
    profile.write_text("inherit: smoke\ninfluence: {select: random}\n", encoding="utf-8")
    theirs = _contents(run)
    out = make("synthesizer", "SHARE_FROM=e2e", outputs=run.parent, profile=profile, run="e2e-noinf")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ablation = run.parent / "e2e-noinf"
    for stage in ("01_preprocess", "02_seed", "iter_1/03_sample_score"):
        assert json.loads((ablation / stage / MARKER).read_text())["shared_from"]["run"] == "e2e", stage
        assert any(p.is_symlink() for p in (ablation / stage).iterdir()), stage
    own = ablation / "iter_1" / "04_influence"
    assert "shared_from" not in json.loads((own / MARKER).read_text())
    assert not any(p.is_symlink() for p in own.iterdir())
    assert (ablation / "iter_2/04_influence" / MARKER).exists() and not (ablation / "05_final").exists()
    assert _contents(run) == theirs  # not one file of the method run was written
    again = _markers(ablation)
    out = make("synthesizer", "SHARE_FROM=e2e", outputs=run.parent, profile=profile, run="e2e-noinf")
    assert out.returncode == 0 and _markers(ablation) == again, (out.stdout + out.stderr)[-2000:]
