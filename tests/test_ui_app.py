"""The web app served on 127.0.0.1: the public API through ``gradio_client``, the CLI, and a real Chromium.

One server (embedded defaults) is shared by the module. The browser test drives Debian's
``chromium`` through ``chromedriver`` with selenium; it is skipped — with the reason printed by
``pytest -rs`` — when any of the three is missing (``.ci/run`` installs them, so CI runs it).
Screenshots go to ``$ATTNSYNTH_UI_SCREENSHOTS`` when set, else to pytest's temporary folder.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the web app tests need gradio (pip install -e '.[ui]')")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from attnsynth.sis.demo_page import TOY_CHECKPOINT  # noqa: E402
from attnsynth.ui import handlers  # noqa: E402
from attnsynth.ui.app import VIEW_SCALE, build_app, launch  # noqa: E402

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def models():
    return handlers.load_sis(TOY_CHECKPOINT), handlers.load_t2i()


@pytest.fixture(scope="module")
def blocks(models):
    return build_app(*models)


@pytest.fixture(scope="module")
def server(blocks):
    _, url, _ = launch(blocks, host="127.0.0.1", port=None, block=False)
    yield url
    blocks.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def pair_files(models, tmp_path_factory):
    """Two gallery faces written as the upload files a user would have: image + single-channel label map."""
    sis = models[0]
    root = tmp_path_factory.mktemp("uploads")
    paths = {}
    for k, name in ((0, "image"), (1, "reference")):
        face = handlers.gallery_face(k, sis.resolution)
        Image.fromarray(face.image).save(root / f"{name}.png")
        Image.fromarray(face.labels, mode="L").save(root / f"{name}_labels.png")
        paths[name], paths[f"{name}_mask"] = str(root / f"{name}.png"), str(root / f"{name}_labels.png")
    bad = np.asarray(Image.open(paths["image_mask"])).copy()
    bad[0, 0] = sis.model.config.num_classes
    Image.fromarray(bad, mode="L").save(root / "bad_labels.png")
    paths["bad_mask"] = str(root / "bad_labels.png")
    return paths


def _read(result) -> np.ndarray:
    """An image output of gradio_client (a path, or a dict with a path/url) as an RGB array."""
    path = result["path"] if isinstance(result, dict) else result
    with Image.open(path) as handle:
        return np.asarray(handle.convert("RGB"))


def test_public_api_is_the_two_documented_endpoints(client):
    assert sorted(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/sis_transfer", "/t2i_generate"]


def test_one_queue_runs_one_model_call_at_a_time(blocks, server):
    """Every event that runs a model is in one concurrency group of limit 1; the queue is bounded."""
    from attnsynth.ui.limits import QUEUE_SIZE

    model_events = sorted(fn.name for fn in blocks.fns.values() if fn.concurrency_id == "model")
    assert model_events == ["edit", "sis_transfer", "t2i_generate"]
    assert all(fn.concurrency_limit == "default" for fn in blocks.fns.values() if fn.concurrency_id == "model")
    assert blocks._queue.default_concurrency_limit == 1 and blocks._queue.max_size == QUEUE_SIZE


def test_api_sis_transfer(client, models, pair_files):
    sis = models[0]
    result = client.predict(image=handle_file(pair_files["image"]), mask=handle_file(pair_files["image_mask"]),
                            reference=handle_file(pair_files["reference"]),
                            reference_mask=handle_file(pair_files["reference_mask"]), classes="hair,eyes",
                            api_name="/sis_transfer")
    own = handlers.gallery_face(0, sis.resolution)
    expected = handlers.sis_edit(sis, own, handlers.gallery_face(1, sis.resolution), mode="transfer styles", classes=["hair", "eyes"])
    np.testing.assert_array_equal(_read(result), expected.image)  # PNG through the server: bit-exact


def test_api_errors_are_messages_and_the_server_keeps_serving(client, pair_files):
    files = {"image": handle_file(pair_files["image"]), "reference": handle_file(pair_files["reference"]),
             "reference_mask": handle_file(pair_files["reference_mask"])}
    with pytest.raises(AppError, match="contains value 19; valid class ids are 0..18"):
        client.predict(mask=handle_file(pair_files["bad_mask"]), classes="", api_name="/sis_transfer", **files)
    with pytest.raises(AppError, match="unknown class or preset 'wings'"):
        client.predict(mask=handle_file(pair_files["image_mask"]), classes="wings", api_name="/sis_transfer", **files)
    with pytest.raises(AppError, match="prompt has 501 characters"):
        client.predict(prompt="a" * 501, subjects="auto", method="none", seed=0, step_size=1, guided_steps=1, steps=2,
                       guidance_scale=3, boxes="", api_name="/t2i_generate")
    result = client.predict(mask=handle_file(pair_files["image_mask"]), classes="", api_name="/sis_transfer", **files)
    assert _read(result).std() > 0


def test_server_paths_from_the_browser_are_refused(server):
    """A raw request naming a file on the server (not an upload) ends in an error event, never in the file."""
    import httpx

    secret = str(TOY_CHECKPOINT / "config.json")
    data = [{"path": secret, "meta": {"_type": "gradio.FileData"}}] * 4 + [""]
    response = httpx.post(f"{server}gradio_api/call/sis_transfer", json={"data": data}, timeout=30)
    if response.status_code == 200:  # queued: the refusal arrives as the event's result
        events = httpx.get(f"{server}gradio_api/call/sis_transfer/{response.json()['event_id']}", timeout=60).text
        assert "event: error" in events and "complete" not in events
    else:
        assert response.status_code >= 400
    assert "_class_name" not in response.text


def test_api_t2i_generate(client, models):
    t2i = models[1]
    unguided, guided, attention, unguided_caption, guided_caption, groups = client.predict(
        prompt=PROMPT, subjects="circle,square", method="ait2i", seed=2, step_size=5.0, guided_steps=2, steps=4,
        guidance_scale=3.0, boxes="", api_name="/t2i_generate")
    expected = handlers.t2i_generate(t2i, prompt=PROMPT, subjects="circle,square", method="ait2i", seed=2, step_size=5.0,
                                     guided_steps=2, steps=4, guidance_scale=3.0)
    np.testing.assert_array_equal(_read(unguided), expected.unguided)
    np.testing.assert_array_equal(_read(guided), expected.guided)
    assert _read(attention).shape == expected.attention.shape
    assert groups == expected.groups and guided_caption == expected.guided_caption


def test_cli_ui_binds_loopback_and_warns_otherwise(monkeypatch):
    from typer.testing import CliRunner

    from attnsynth.cli import app
    from attnsynth.ui import app as ui_app

    calls = []
    monkeypatch.setattr(ui_app, "launch", lambda blocks, **kwargs: calls.append(kwargs))
    runner = CliRunner()
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 0, result.output
    assert calls[-1] == {"host": "127.0.0.1", "port": 7860, "block": True}
    assert "warning: binding" not in result.output
    result = runner.invoke(app, ["ui", "--host", "0.0.0.0", "--port", "7999"])
    assert result.exit_code == 0 and calls[-1]["host"] == "0.0.0.0"
    assert "warning: binding 0.0.0.0:7999" in result.output
    result = runner.invoke(app, ["ui", "--port", "0"])
    assert isinstance(result.exception, ValueError) and "--port 0 is invalid" in str(result.exception)


# ---- the real browser ---------------------------------------------------------------------------------
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2000")


def _browser_or_skip(user_data_dir: Path, downloads: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("BROWSER TEST SKIPPED: chromium/chromedriver not found "
                    "(apt-get install chromium chromium-driver; .ci/run does this)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("BROWSER TEST SKIPPED: selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={user_data_dir}",):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def _wait_image(driver, elem_id: str, timeout: float = 90.0, previous: str | None = None) -> np.ndarray:
    """Wait until the image inside ``#elem_id`` has a source (other than ``previous``); fetch it as RGB."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def source(d):
        images = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        src = images[0].get_attribute("src") if images else None
        return src if src and src != previous else False

    src = WebDriverWait(driver, timeout).until(source)
    with urllib.request.urlopen(src, timeout=30) as response:
        with Image.open(io.BytesIO(response.read())) as handle:
            return np.asarray(handle.convert("RGB"))


def _shot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def test_browser_sis_edit_t2i_generation_and_error(server, models, tmp_path_factory):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sis, t2i = models
    shots = Path(os.environ.get("ATTNSYNTH_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui_screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    downloads = tmp_path_factory.mktemp("downloads")
    driver = _browser_or_skip(tmp_path_factory.mktemp("chromium_profile"), downloads)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.ID, "sis-run"))
        assert "CA²-SIS" in driver.page_source and "AI-T2I" in driver.page_source

        # CA²-SIS, painting: a background-coloured stroke (the brush's first colour) across the source's map.
        source = handlers.gallery_face(0, sis.resolution)
        before = driver.find_element(By.CSS_SELECTOR, "#sis-source-view img").get_attribute("src")
        driver.execute_script("document.querySelector('#sis-paint button').click()")
        editor = wait.until(lambda d: d.find_element(By.ID, "sis-editor"))
        wait.until(lambda d: editor.find_elements(By.CSS_SELECTOR, "canvas"))
        editor.find_element(By.CSS_SELECTOR, "button[aria-label='Brush']").click()
        stroke = ActionChains(driver).move_to_element_with_offset(editor.find_element(By.CSS_SELECTOR, "canvas"), -60, -60)
        stroke = stroke.click_and_hold()
        for _ in range(12):
            stroke = stroke.move_by_offset(10, 10)
        stroke.release().perform()
        driver.find_element(By.ID, "sis-apply-paint").click()
        view = _wait_image(driver, "sis-source-view", previous=before)  # image | label map, enlarged
        width = view.shape[1] // 2
        painted = handlers.canvas_to_labels(view[::VIEW_SCALE, width::VIEW_SCALE], sis.model.config.num_classes, sis.resolution)
        changed = painted != source.labels
        assert changed.sum() > 10 and (painted[changed] == 0).all()  # the stroke became background, nothing else moved

        # The download button holds the painted map as a PNG of class ids (refreshed by an event chained after
        # "Use the painted map", so the first click may still fetch the previous map: try a few times).
        downloaded = None
        for _ in range(10):
            for old_file in downloads.glob("*"):
                old_file.unlink()
            driver.find_element(By.ID, "sis-download").click()
            saved = WebDriverWait(driver, 30).until(lambda d: [p for p in downloads.glob("*.png")])
            time.sleep(0.2)  # let Chromium finish writing it
            with Image.open(saved[0]) as handle:
                assert handle.mode == "L"
                downloaded = np.asarray(handle)
            if np.array_equal(downloaded, painted):
                break
            time.sleep(1.0)
        np.testing.assert_array_equal(downloaded, painted)

        # CA²-SIS edit on the painted map: the reference is gallery face 1, the "eyes" preset and "hair" ticked.
        driver.find_element(By.XPATH, "//button[normalize-space()='eyes']").click()
        wait.until(lambda d: d.find_element(By.XPATH, "//*[@id='sis-classes']//label[normalize-space()='l_eye']//input").is_selected())
        driver.find_element(By.XPATH, "//*[@id='sis-classes']//label[normalize-space()='hair']").click()
        driver.find_element(By.ID, "sis-run").click()
        shown = _wait_image(driver, "sis-result")
        expected = handlers.sis_edit(sis, source.with_labels(painted), handlers.gallery_face(1, sis.resolution),
                                     mode="transfer styles", classes=["l_eye", "r_eye", "hair"])
        np.testing.assert_array_equal(shown, handlers.enlarge(expected.image, VIEW_SCALE))
        wait.until(lambda d: "oracle:" in d.find_element(By.ID, "sis-caption").text)
        driver.set_window_size(1400, 2900)
        time.sleep(0.5)
        _shot(driver, shots, "ui_sis.png")
        driver.set_window_size(1400, 2000)

        # AI-T2I: a wrong subject first (error message, server keeps serving), then a generation.
        driver.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='AI-T2I']").click()
        subjects = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#t2i-subjects textarea"))
        subjects.clear()
        subjects.send_keys("elephant")
        driver.find_element(By.ID, "t2i-run").click()
        toast = WebDriverWait(driver, 60).until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body") if "elephant" in e.text])
        assert "elephant" in toast[0].text
        _shot(driver, shots, "ui_t2i_error.png")
        subjects.clear()
        subjects.send_keys("circle,square")
        driver.find_element(By.ID, "t2i-run").click()
        guided = _wait_image(driver, "t2i-guided", timeout=120)
        unguided = _wait_image(driver, "t2i-unguided")
        figure = _wait_image(driver, "t2i-attention")
        preset = handlers.recommended(t2i, "ait2i")
        expected = handlers.t2i_generate(t2i, prompt=PROMPT, subjects="circle,square", method="ait2i", seed=0,
                                         step_size=preset["step_size"], guided_steps=preset["guided_steps"],
                                         steps=preset["steps"], guidance_scale=preset["guidance_scale"])
        np.testing.assert_array_equal(unguided, expected.unguided)
        np.testing.assert_array_equal(guided, expected.guided)
        assert figure.shape == expected.attention.shape
        wait.until(lambda d: "oracle:" in d.find_element(By.ID, "t2i-guided-caption").text)
        wait.until(lambda d: "square ← tokens" in d.find_element(By.CSS_SELECTOR, "#t2i-groups textarea").get_attribute("value"))
        time.sleep(0.5)
        _shot(driver, shots, "ui_t2i.png")
        print(f"screenshots in {shots}")
    finally:
        driver.quit()


def test_cli_ui_loads_the_runs_given_by_flag(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from attnsynth.cli import app
    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import build_model, load_config
    from attnsynth.t2i.testing import tiny_sd_pipeline
    from attnsynth.ui import app as ui_app

    resolution = tuple(load_config(TOY_CHECKPOINT).resolution)
    build_model(get_config("spade-small", num_classes=19, resolution=resolution)).save_pretrained(tmp_path / "spade")
    tiny_sd_pipeline(seed=0).save_pretrained(tmp_path / "sd")
    built = []
    monkeypatch.setattr(ui_app, "build_app", lambda sis, t2i: built.append((sis, t2i)) or "blocks")
    monkeypatch.setattr(ui_app, "launch", lambda blocks, **kwargs: None)
    runner = CliRunner()
    result = runner.invoke(app, ["ui", "--sis-checkpoint", str(TOY_CHECKPOINT), "--spade-checkpoint", str(tmp_path / "spade"),
                                 "--t2i-model", str(tmp_path / "sd")])
    assert result.exit_code == 0, result.output
    sis, t2i = built[-1]
    assert sis.name == TOY_CHECKPOINT.name and sis.spade.config.arch == "spade" and t2i.name == "sd" and not t2i.shapes_oracle
    result = runner.invoke(app, ["ui", "--sis-checkpoint", str(tmp_path / "missing")])
    assert isinstance(result.exception, FileNotFoundError) and "is not a directory" in str(result.exception)
