"""report.html: self-contained (plots embedded, nothing fetched), the same tables as
report.md, rendered by a real headless Chromium (tables sortable, images decoded, a
screenshot that is not blank)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report(tmp_path):
    """The outputs of a multilabel run pair with subgroups, a threshold, flips and plots."""
    import pandas as pd
    from tasks.test_clinical_sections import cfg_of, run

    from medray.data.table import SampleTable
    from medray.report.document import build_metrics
    from medray.report.writers import write_outputs
    from medray.tasks.classification.config import ThresholdConfig

    rng = np.random.default_rng(1)
    n = 160
    ids = [f"img{i:03d}.png" for i in range(n)]
    y = (rng.random((n, 2)) < 0.3).astype(int)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.15, (n, 2)), 0, 1)
    c = np.clip(p + rng.normal(0, 0.08, p.shape), 0, 1)
    samples = pd.DataFrame({"sample_id": ids, "path": "", "split": ["test"] * 120 + ["val"] * 40,
                            "target": [tuple(t) for t in y], "View Position": np.where(np.arange(n) % 3, "PA", "AP")})
    table = SampleTable("chestxray14", "multilabel", ["Effusion", "Mass"], "/", samples, subgroup_columns=["View Position"])
    test = samples["split"] == "test"
    base = run("torch-fp32", "baseline", np.array(ids)[test], p[test])
    cand = run("onnxruntime-fp32", "candidate", np.array(ids)[test], c[test])
    val = run("torch-fp32", "validation", np.array(ids)[~test], p[~test])
    cfg = cfg_of(threshold=ThresholdConfig(method="youden"))
    ev = samples[test].reset_index(drop=True)
    doc = build_metrics(cfg, table, ev, [base, cand], validation=val)
    write_outputs(str(tmp_path), {"report": {"plots": True}}, doc, [base, cand], table, ev)
    return tmp_path, doc


def test_html_is_self_contained_with_the_markdown_tables(report):
    out, doc = report
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no network fetch
    assert page.count('src="data:image/png;base64,') == len(doc["plots"]) >= 4
    md_tables = sum(1 for i, line in enumerate(md.splitlines()) if line.startswith("|---"))
    assert page.count("<table>") == md_tables
    for heading in ("Threshold transfer", "Calibration", "Subgroups", "Per-class AUC"):
        assert f"<h2>{heading}</h2>" in page


def test_html_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    if CHROMIUM is None:
        if os.environ.get("MEDRAY_REQUIRE_CHROMIUM"):  # CI installs it: a missing browser is a failure there
            pytest.fail("MEDRAY_REQUIRE_CHROMIUM is set but chromium is not on PATH")
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    out, doc = report
    url = (out / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    tables = re.findall(r'<table class="sortable">', dom)
    assert len(tables) >= 6, dom[:500]  # the script ran on every table
    n = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert n == len(doc["plots"]) and f'data-images-rendered="{n}"' in dom  # every PNG decoded
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1280,2400", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1280)
    assert img.std() > 20 and (img < 128).mean() > 0.01  # text, tables and plots, not a blank page


def test_a_sample_id_cannot_break_a_table_or_inject_html():
    """The break-it round: an id with ``|``, a newline or raw HTML broke the skipped table."""
    from markdown_it import MarkdownIt

    from medray.report.html import render_html
    from medray.report.markdown import skipped_section

    evil = "a|b\nc<img src=x onerror=alert(1)>"
    doc = {"skipped": [{"sample_id": evil, "reason": "x | y"}], "dataset": {"n_samples": 3}}
    md = "\n".join(skipped_section(doc))
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Sample" not in line]
    assert len(rows) == 1 and rows[0].count(" | ") == 1  # one row, two cells
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    cells = [t.content for t in tokens if t.type == "inline" and t.map and "a|b" in t.content.replace("\\|", "|")]
    assert cells and "<img" not in render_html(md)
    assert "a|b c&lt;img" in render_html(md)
