"""``influcoder serve``: the JSON API against `influcoder attribute` / `influcoder filter` on the same run,
bad input answered with 4xx JSON while the server stays up, bad folders refused at startup (exit 2), and
the page driven in a real headless Chromium (query, slider, export, ?q= links, screenshot)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from test_distill import _write_problem
from test_encoder import make_tiny_bert_dir

CHROMEDRIVER = "/usr/bin/chromedriver"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder laid out as the run contract says, made with the real stage functions on tiny models:
    train an encoder on teacher labels, embed the whole pool, index it, a fidelity report and the manifest."""
    from influcoder.student.config import DistillConfig
    from influcoder.student.distill import train
    from influcoder.search.embed import EmbedConfig, embed_file
    from influcoder.search.index import IndexConfig, build_index
    from influcoder.teacher.labels import meta_path

    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    data.mkdir()
    pf, qf, lf = _write_problem(data, n_pool=40, n_query=8)
    run = root / "run"
    (run / "labels").mkdir(parents=True)
    shutil.copy(lf, run / "labels" / "labels.npy")
    shutil.copy(meta_path(lf), meta_path(run / "labels" / "labels.npy"))
    tiny = make_tiny_bert_dir(root / "tiny-bert")
    train(DistillConfig(pool_data=str(pf), query_data=str(qf), labels=str(run / "labels" / "labels.npy"),
                        out=str(run / "encoder"), encoder=str(tiny), epochs=1, queries_per_batch=4, candidates=6,
                        val_pool=8, val_queries=2, lr=1e-3, seed=0, max_length=32, tau=0.5), progress=False)
    embed_file(EmbedConfig(str(run / "encoder"), str(pf), str(run / "embeddings"), dtype="float32"), progress=False)
    build_index(IndexConfig(str(run / "embeddings"), str(run / "index")))
    (run / "report").mkdir()
    (run / "report" / "fidelity.md").write_text("# Fidelity report\n\n| metric | value |\n|---|---|\n| per-anchor | 0.5 |\n\n"
                                                "<script>alert(1)</script>\n\n![fidelity](fidelity.png)\n")
    # the report's JSON as report.fidelity_report writes it (the fields the explorer reads), its verdict from
    # report.verdict on made-up per-query figures: the student below the length baseline
    from influcoder.run.report import verdict

    per_query = {"student": np.linspace(0.1, 0.3, 8), "untrained": np.zeros(8), "length": np.linspace(0.3, 0.5, 8)}
    methods = {m: {"per_anchor_spearman": float(v.mean())} for m, v in per_query.items()}
    (run / "report" / "fidelity.json").write_text(json.dumps({
        "methods": methods, "block": {"n_pool": 8, "n_queries": 8},
        "verdict": verdict(per_query, 0.02, 200, 0, 40)}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["student", "length"], [0.2, 0.4])
    fig.savefig(run / "report" / "fidelity.png")
    plt.close(fig)
    (run / "config.yaml").write_text("pool: {path: %s}\nqueries: {path: %s}\n" % (pf, qf))
    spec = {"preset": None, "prompt_field": None, "response_field": None, "id_field": None}
    (run / "run_manifest.json").write_text(json.dumps({
        "format": "influcoder-run/1", "config": "config.yaml", "encoder": "encoder", "embeddings": "embeddings",
        "index": "index", "pool": {"path": str(pf), **spec}, "queries": {"path": str(qf), **spec},
        "labels": "labels/labels.npy", "report": "report/fidelity.md",
        "steps_done": ["labels", "train", "embed", "index", "report"]}, indent=1))
    return run


@pytest.fixture(scope="module")
def app(run_dir):
    from influcoder.app.serve import create_app

    return create_app(run_dir)


@pytest.fixture(scope="module")
def server(app):
    """The app under a real uvicorn server on a free port of 127.0.0.1 (in a thread)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        if time.time() - t0 > 30 or not th.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    import httpx

    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "run_manifest.json").read_text())


def _attribute_cli(run_dir, tmp_path, text: str, k: int) -> list[dict]:
    """`influcoder attribute` on the run's index for one query text."""
    from typer.testing import CliRunner

    from influcoder.app.cli import app as cli

    out = tmp_path / f"attr-{abs(hash(text))}.jsonl"
    r = CliRunner().invoke(cli, ["attribute", "--encoder", str(run_dir / "encoder"), "--index", str(run_dir / "index"),
                                 "--query-text", text, "--top-k", str(k), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return _rows(out)


def _filter_cli(run_dir, out: Path, *args: str) -> Path:
    """`influcoder filter` on the run's pool, embeddings and queries."""
    from typer.testing import CliRunner

    from influcoder.app.cli import app as cli

    m = _manifest(run_dir)
    r = CliRunner().invoke(cli, ["filter", "--encoder", str(run_dir / "encoder"), "--data", m["pool"]["path"],
                                 "--pool-embeddings", str(run_dir / "embeddings"), "--queries", m["queries"]["path"],
                                 "--out", str(out), "--quiet", *args])
    assert r.exit_code == 0, r.output
    return out


def _teacher_ranks(run_dir, query_id: str) -> dict[str, int]:
    meta = json.loads((run_dir / "labels" / "labels.meta.json").read_text())
    col = np.load(run_dir / "labels" / "labels.npy")[:, meta["query_ids"].index(query_id)]
    ranked = sorted(range(len(col)), key=lambda i: (-float(col[i]), i))
    return {meta["pool_ids"][i]: r + 1 for r, i in enumerate(ranked)}


# ----------------------------------------------------------------------------------------------- API


def test_attribute_api_equals_attribute_cli(run_dir, client, tmp_path):
    pool = {r["id"]: r for r in _rows(_manifest(run_dir)["pool"]["path"])}
    text = "say red dog\ncat cat"
    res = client.get("/api/attribute", params={"text": text, "k": 7})
    assert res.status_code == 200, res.text
    got = res.json()
    want = _attribute_cli(run_dir, tmp_path, text, 7)
    assert [r["id"] for r in got["results"]] == [r["id"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got["results"]], [r["score"] for r in want], rtol=0, atol=1e-6)
    assert [r["rank"] for r in got["results"]] == list(range(1, 8))
    for r, w in zip(got["results"], want):
        assert (r["prompt"], r["response"]) == (pool[r["id"]]["prompt"], pool[r["id"]]["response"])
        assert r["ood"] == w["pool_ood"] and r["nn_similarity"] == pytest.approx(w["pool_nn_similarity"])
        assert r["ood"] in (True, False)  # the trained encoder's metadata names its training data: OOD is on
    assert got["query"]["id"] is None and "teacher_rank" not in got["results"][0]  # free text: no teacher labels
    assert got["query"]["ood"] == want[0]["query_ood"]


def test_query_id_gets_teacher_ranks(run_dir, client, tmp_path):
    queries = _rows(_manifest(run_dir)["queries"]["path"])
    q = queries[3]
    res = client.get("/api/attribute", params={"query_id": q["id"], "k": 41})
    assert res.status_code == 200, res.text
    got = res.json()
    assert got["query"]["id"] == q["id"] and got["query"]["text"] == f"{q['prompt']}\n{q['response']}"
    want = _attribute_cli(run_dir, tmp_path, got["query"]["text"], 41)
    assert [r["id"] for r in got["results"]] == [r["id"] for r in want]
    teacher = _teacher_ranks(run_dir, q["id"])
    assert got["teacher"]["n_labelled"] == 40
    for r in got["results"]:
        assert r["teacher_rank"] == teacher.get(r["id"])  # "extra" is in the pool but not labelled: None
    assert any(r["teacher_rank"] is None for r in got["results"]) and sum(r["teacher_rank"] is not None for r in got["results"]) == 40
    # the same text typed in is recognised as that query
    by_text = client.get("/api/attribute", params={"text": got["query"]["text"], "k": 41}).json()
    assert by_text["query"]["id"] == q["id"] and by_text["results"] == got["results"]


def test_filter_and_export_equal_filter_cli(run_dir, client, tmp_path):
    out = _filter_cli(run_dir, tmp_path / "f", "--fraction", "0.25")
    ranked = _rows(out / "ranked.jsonl")
    res = client.get("/api/filter", params={"fraction": 0.25}).json()
    assert res["n_pool"] == 41 and res["n_queries"] == 8
    assert res["selected_ids"] == [r["id"] for r in ranked if r["selected"]]
    assert res["n_selected"] == 10 and res["n_kept"] == 31
    exp = client.get("/api/export", params={"fraction": 0.25})
    assert exp.status_code == 200 and "filtered.jsonl" in exp.headers["content-disposition"]
    assert [json.loads(l) for l in exp.text.splitlines()] == _rows(out / "filtered.jsonl")
    # a threshold: what `influcoder filter --threshold` selects
    t = float(np.median([r["score"] for r in ranked]))
    out_t = _filter_cli(run_dir, tmp_path / "ft", "--threshold", repr(t))
    res_t = client.get("/api/filter", params={"threshold": repr(t)}).json()
    assert res_t["selected_ids"] == [r["id"] for r in _rows(out_t / "ranked.jsonl") if r["selected"]]
    assert res_t["n_selected"] == sum(r["score"] > t for r in ranked)
    exp_t = client.get("/api/export", params={"threshold": repr(t)}).text
    assert [json.loads(l) for l in exp_t.splitlines()] == _rows(out_t / "filtered.jsonl")
    # keep=true exports the selected examples instead
    kept = [json.loads(l) for l in client.get("/api/export", params={"fraction": 0.25, "keep": "true"}).text.splitlines()]
    assert [r["id"] for r in kept] == sorted(res["selected_ids"], key=lambda i: next(r["row"] for r in ranked if r["id"] == i))
    info = client.get("/api/info").json()
    assert sum(info["histogram"]["counts"]) == 41 and len(info["queries"]) == 8 and info["has_labels"] is True
    assert info["histogram"]["max"] == pytest.approx(ranked[0]["score"])


@pytest.mark.parametrize("url,status,needle", [
    ("/api/attribute?text=", 400, "empty"),
    ("/api/attribute?text=%20%20", 400, "empty"),
    ("/api/attribute", 400, "give a query"),
    ("/api/attribute?text=a&query_id=q0", 400, "not both"),
    ("/api/attribute?text=a&k=0", 400, "k must be between 1 and 41"),
    ("/api/attribute?text=a&k=42", 400, "k must be between 1 and 41"),
    ("/api/attribute?text=a&k=ten", 400, "parameter 'k'"),
    ("/api/attribute?query_id=nope", 404, "unknown query id 'nope'"),
    ("/api/filter?fraction=1.5", 400, "fraction must be between 0 and 1"),
    ("/api/filter?fraction=0.1&threshold=0.2", 400, "not both"),
    ("/api/filter?threshold=nan", 400, "finite"),
    ("/api/filter?threshold=abc", 400, "parameter 'threshold'"),
    ("/api/export?fraction=-1", 400, "fraction must be between 0 and 1"),
    ("/api/nothing", 404, "no such page"),
    ("/report/..%2Frun_manifest.json", 404, ""),
])
def test_bad_requests_get_4xx_json_and_the_server_stays_up(client, url, status, needle):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert client.get("/api/info").status_code == 200


def test_report_is_rendered_without_raw_html(client):
    r = client.get("/report/")
    assert r.status_code == 200 and "<table>" in r.text and "<td>0.5</td>" in r.text
    assert "<script>alert(1)</script>" not in r.text
    assert client.get("/report/fidelity.md").text.startswith("# Fidelity report")


def test_the_runs_verdict_travels_with_every_score(run_dir, client):
    """info, every attribution, every filter answer and the export carry the run's verdict (report/fidelity.json);
    an index folder without a report says its scores were never checked."""
    from fastapi.testclient import TestClient

    from influcoder.app.serve import create_app

    rep = json.loads((run_dir / "report" / "fidelity.json").read_text())
    info = client.get("/api/info").json()
    t = info["trust"]
    assert t["level"] == rep["verdict"]["level"] == "do-not-use" and t["word"] == "DO NOT USE"
    assert t["per_anchor"] == pytest.approx(0.2) and t["baseline"] == "length" and t["baseline_per_anchor"] == pytest.approx(0.4)
    assert info["report_figure"] == "/report/fidelity.png" and client.get("/report/fidelity.png").status_code == 200
    assert client.get("/api/attribute", params={"text": "say red dog", "k": 3}).json()["trust"] == t
    assert client.get("/api/filter", params={"fraction": 0.1}).json()["trust"] == t
    exp = client.get("/api/export", params={"fraction": 0.1})
    assert exp.headers["x-influcoder-verdict"] == "DO NOT USE (held-out per-anchor Spearman 0.200 vs 0.400 for the length baseline)"
    bare = TestClient(create_app(run_dir / "index")).get("/api/info").json()["trust"]
    assert bare["level"] == "unknown" and bare["per_anchor"] is None and "never compared" in bare["line"]


def test_bad_folders_are_refused(run_dir, tmp_path):
    from influcoder.app.serve import ServeError, create_app

    (tmp_path / "empty").mkdir()
    with pytest.raises(ServeError, match="neither a run folder"):
        create_app(tmp_path / "empty")
    with pytest.raises(ServeError, match="no such folder"):
        create_app(tmp_path / "missing")
    half = tmp_path / "half"
    half.mkdir()
    m = _manifest(run_dir)
    m.update(index=None, encoder=str(run_dir / "encoder"), steps_done=["labels", "train"])
    (half / "run_manifest.json").write_text(json.dumps(m))
    with pytest.raises(ServeError, match=r"no index yet \('index' is null; steps done: labels, train\)"):
        create_app(half)
    (half / "run_manifest.json").write_text(json.dumps({**m, "format": "other/1"}))
    with pytest.raises(ServeError, match="unknown run format 'other/1'"):
        create_app(half)
    # the command line: one line on stderr, exit 2, nothing served
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.run([sys.executable, "-m", "influcoder", "serve", str(tmp_path / "empty"), "--port", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("loading")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "neither a run folder" in lines[0]
    with socket.socket() as busy:  # a port already taken: said before anything is loaded
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "influcoder", "serve", str(run_dir), "--port", str(port)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_index_folder_serves_attribution_and_filters_with_queries(run_dir, tmp_path):
    from fastapi.testclient import TestClient

    from influcoder.app.serve import create_app

    m = _manifest(run_dir)
    bare = TestClient(create_app(run_dir / "index"))
    info = bare.get("/api/info").json()
    assert info["kind"] == "index" and info["queries"] == [] and info["histogram"] is None and info["report"] is None
    r = bare.get("/api/attribute", params={"text": "say red dog", "k": 3})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == [
        x["id"] for x in _attribute_cli(run_dir, tmp_path, "say red dog", 3)]
    f = bare.get("/api/filter", params={"fraction": 0.1})
    assert f.status_code == 404 and "--queries" in f.json()["error"]
    assert bare.get("/report/").status_code == 404
    with_q = TestClient(create_app(run_dir / "index", queries=m["queries"]["path"]))
    out = _filter_cli(run_dir, tmp_path / "f", "--fraction", "0.5")
    assert with_q.get("/api/filter", params={"fraction": 0.5}).json()["selected_ids"] == [
        r["id"] for r in _rows(out / "ranked.jsonl") if r["selected"]]


# ------------------------------------------------------------------------------------------- browser


def _browser_or_skip():
    if shutil.which("chromium") and Path(CHROMEDRIVER).exists():
        return
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium / chromium-driver are not installed (.ci/run installs them with apt-get)")
    pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def _rendered(driver) -> list[tuple[str, float]]:
    from selenium.webdriver.common.by import By

    return [(li.get_attribute("data-id"), float(li.get_attribute("data-score")))
            for li in driver.find_elements(By.CSS_SELECTOR, "#results li.result")]


def test_page_in_headless_chromium(run_dir, server, client, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    pool = {r["id"]: r for r in _rows(_manifest(run_dir)["pool"]["path"])}
    d.get(server + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "8" in d.find_element(By.ID, "filter-help").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#queries button")) == 8
    assert d.find_element(By.ID, "report").get_attribute("href") == server + "/report/"
    # how far to trust the scores: the run's verdict in the header, coloured by its level, with its figures
    banner = d.find_element(By.ID, "verdict")
    assert banner.get_attribute("data-level") == "do-not-use"
    assert "DO NOT USE" in banner.text and "0.200 vs 0.400 for the length baseline" in banner.text
    assert banner.value_of_css_property("background-color") == "rgba(180, 35, 24, 1)"
    assert "DO NOT USE" in d.find_element(By.ID, "filter-trust").text

    # type a query: the rendered ranking is `influcoder attribute`'s
    text = "say blue night"
    box = d.find_element(By.ID, "q")
    box.send_keys(text)
    d.find_element(By.ID, "go").click()
    _wait(d, lambda d: len(_rendered(d)) == 10)
    want = _attribute_cli(run_dir, tmp_path, text, 10)
    got = _rendered(d)
    assert [i for i, _ in got] == [r["id"] for r in want]
    np.testing.assert_allclose([s for _, s in got], [r["score"] for r in want], atol=1e-6)
    # ... and beside the score list
    trust = d.find_element(By.ID, "results-trust")
    assert trust.is_displayed() and "DO NOT USE" in trust.text and "0.200" in trust.text
    assert "?q=say%20blue%20night" in d.current_url or "?q=say+blue+night" in d.current_url
    # expand the first result: its full texts are shown
    first = d.find_element(By.CSS_SELECTOR, "#results li.result")
    first.find_element(By.TAG_NAME, "summary").click()
    assert first.find_element(By.CSS_SELECTOR, "pre.response").text == pool[want[0]["id"]]["response"].strip()
    assert first.find_element(By.CSS_SELECTOR, ".badge").text in ("OOD", "in distribution")

    # pick one of the run's queries: the teacher's rank is shown beside the encoder's
    d.find_element(By.CSS_SELECTOR, "#queries button[data-query-id='q2']").click()
    _wait(d, lambda d: "query q2" in d.find_element(By.ID, "query-info").text and len(_rendered(d)) == 10)
    api = client.get("/api/attribute", params={"query_id": "q2", "k": 10}).json()["results"]
    shown = [li.find_element(By.CSS_SELECTOR, ".teacher").text for li in d.find_elements(By.CSS_SELECTOR, "#results li.result")]
    assert shown == [f"teacher #{r['teacher_rank']}" if r["teacher_rank"] else "teacher: not labelled" for r in api]
    assert [i for i, _ in _rendered(d)] == [r["id"] for r in api]

    # the slider: the count shown changes and equals the API's (and `influcoder filter --threshold`'s)
    count = d.find_element(By.ID, "count")
    _wait(d, lambda d: count.get_attribute("data-threshold") != "")
    before = int(count.get_attribute("data-selected"))
    slider = d.find_element(By.ID, "threshold")
    slider.send_keys(Keys.ARROW_LEFT * 400)
    value = slider.get_attribute("value")
    _wait(d, lambda d: count.get_attribute("data-threshold") == value)
    after = int(count.get_attribute("data-selected"))
    assert after != before and after > before
    api_f = client.get("/api/filter", params={"threshold": value}).json()
    assert after == api_f["n_selected"] and f"{after} of 41 examples would go" in count.text
    scores = _rows(_filter_cli(run_dir, tmp_path / "f", "--fraction", "0") / "scores.jsonl")
    assert after == sum(r["score"] > float(value) for r in scores)
    d.save_screenshot(str(tmp_path / "explorer.png"))

    # export: the downloaded file is /api/export's for the slider's threshold
    d.find_element(By.ID, "export").click()
    target = d.downloads / "filtered.jsonl"
    _wait(d, lambda d: target.exists() and not list(d.downloads.glob("*.crdownload")), timeout=60)
    assert target.read_bytes() == client.get("/api/export", params={"threshold": value}).content
    kept_ids = {json.loads(l)["id"] for l in target.read_text().splitlines()}
    assert kept_ids == {r["id"] for r in scores if r["score"] <= float(value)} and len(kept_ids) == 41 - after

    # a shared link opens that query's results
    text2 = "what is paris\nrain"
    d.get(server + "/?q=" + quote(text2))
    _wait(d, lambda d: len(_rendered(d)) == 10 and d.find_element(By.ID, "q").get_attribute("value") == text2)
    assert [i for i, _ in _rendered(d)] == [r["id"] for r in _attribute_cli(run_dir, tmp_path, text2, 10)]
    d.save_screenshot(str(tmp_path / "explorer-shared-link.png"))
    assert (tmp_path / "explorer.png").stat().st_size > 10_000

    # no sideways scroll at 1,400 px (the queries' one-line buttons once widened the left column past the window)
    for width in (1400, 1024):
        d.set_window_size(width, 1000)
        d.get(server + "/?query_id=q2")
        _wait(d, lambda d: len(_rendered(d)) == 10)
        sw, cw = d.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert sw <= cw, (width, sw, cw)

    # the report page shows the report's figure, rendered (a decoded image, not a broken link)
    d.find_element(By.ID, "report").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "body.report img"))
    img = d.find_element(By.CSS_SELECTOR, "body.report img")
    _wait(d, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
    assert img.get_attribute("src") == server + "/report/fidelity.png"
    d.save_screenshot(str(tmp_path / "explorer-report.png"))
