"""`fsseg demo-ui`: the Gradio app driven by headless Chromium (Debian package) through Playwright.

Needs ``gradio`` and ``playwright`` (python package only; never ``playwright install``) and
``/usr/bin/chromium`` (``sh tests/browser_setup.sh`` installs it). Skips, saying why, when one is
missing. The model logic is also tested without a browser.
"""

import io
import os
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsseg.inference import SMALL_MODEL
from fsseg.modules import FewShotModule
from fsseg.webui import DemoSegmenter, editor_image_and_mask, mask_from_upload

CHROMIUM = os.environ.get("FSSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def small_module():
    torch.manual_seed(0)
    return FewShotModule(**SMALL_MODEL).eval()


def _images(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sup = rng.integers(0, 80, (90, 120, 3), dtype=np.uint8)
    sup[20:70, 30:90] = (220, 40, 40)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:70, 30:90] = 255
    query = rng.integers(0, 80, (77, 143, 3), dtype=np.uint8)
    query[10:60, 50:120] = (220, 40, 40)
    paths = {"support": root / "support.png", "mask": root / "mask.png", "query": root / "query.png"}
    Image.fromarray(sup).save(paths["support"])
    Image.fromarray(mask).save(paths["mask"])
    Image.fromarray(query).save(paths["query"])
    return paths


def test_demo_segmenter_without_browser():
    seg = DemoSegmenter(small_module())
    img = np.zeros((60, 80, 3), np.uint8)
    m = np.zeros((60, 80), bool)
    m[10:40, 10:50] = True
    res = seg([(img, m)], np.zeros((33, 47, 3), np.uint8))
    assert res["mask"].shape == (33, 47) and set(np.unique(res["mask"])) <= {0, 255}
    assert res["overlay"].shape == (33, 47, 3)
    # editor values: a painted RGBA layer becomes the mask; an uploaded mask is read as non-zero
    layer = np.zeros((60, 80, 4), np.uint8)
    layer[5:9, 5:9, 3] = 255
    bg, painted = editor_image_and_mask({"background": np.zeros((60, 80, 4), np.uint8), "layers": [layer]})
    assert bg.shape == (60, 80, 3) and painted.sum() == 16
    up = mask_from_upload(np.stack([m.astype(np.uint8)] * 3, -1), (30, 40))
    assert up.shape == (30, 40) and up.any()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'fsseg[demo]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing and could not be installed (run: sh tests/browser_setup.sh as root)")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"chromium at {CHROMIUM} does not start: {e}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def app_url():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'fsseg[demo]')")
    from fsseg.webui import build_app

    demo = build_app(small_module())
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                quiet=True, share=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def _fetch_image(src: str, base: str) -> Image.Image:
    if src.startswith("data:"):
        import base64

        return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    url = src if src.startswith("http") else base + src
    with urllib.request.urlopen(url, timeout=30) as r:
        return Image.open(io.BytesIO(r.read()))


@pytest.mark.slow
def test_webui_in_browser(browser, app_url, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    paths = _images(tmp_path)
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_url)
    done = "() => { const t = document.querySelector('#result_info textarea'); return t && t.value.length > 0; }"
    # Gradio registers uploads asynchronously; on a loaded machine a click can reach the server before
    # an upload does. Upload and click again a few times; a broken app fails every attempt.
    for attempt in range(4):
        page.locator("#support0 input[type=file]").first.set_input_files(str(paths["support"]))
        page.locator("#support_mask0 input[type=file]").first.set_input_files(str(paths["mask"]))
        page.locator("#query input[type=file]").first.set_input_files(str(paths["query"]))
        for elem in ("#support0", "#support_mask0", "#query"):
            page.locator(f"{elem} img").first.wait_for()
        page.wait_for_timeout(2000 * (attempt + 1))
        page.locator("#run").click()
        try:
            page.wait_for_function(done, timeout=30_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 3:
                raise
    info = page.locator("#result_info textarea").input_value()
    assert "1 shot(s)" in info and "query 143x77" in info, info
    overlay = _fetch_image(page.locator("#result_overlay img").first.get_attribute("src"), app_url)
    mask = _fetch_image(page.locator("#result_mask img").first.get_attribute("src"), app_url)
    assert overlay.size == (143, 77) and mask.size == (143, 77)
    m = np.asarray(mask.convert("L"))
    assert set(np.unique(m)) <= {0, 255}
    # where the predicted mask is 0 the overlay shows the query pixels unchanged
    q = np.asarray(Image.open(paths["query"]))
    ov = np.asarray(overlay.convert("RGB"))
    assert np.array_equal(ov[m == 0], q[m == 0])
    page.close()




def _eiffel_supports(shared_data):
    root = shared_data("fss1000-eiffel", "support")
    return sorted((root / "image").glob("*.jpg")), sorted((root / "label").glob("*.png"))


def test_demo_takes_as_many_supports_as_predict_without_browser(shared_data):
    from data_modules.readers.folder import FolderDataset
    from fsseg.webui import pair_uploaded_supports

    images, masks = _eiffel_supports(shared_data)
    shots = pair_uploaded_supports(list(reversed(images)), masks)  # matched by file name, any order
    assert len(shots) == 5
    ds = FolderDataset(str(images[0].parents[2]))  # the support folder as fsseg predict reads it
    for (img, m), key in zip(shots, sorted(ds.records)):
        ref_img, (ref_mask,) = ds.load(key, [0])
        assert np.array_equal(img, ref_img) and np.array_equal(m, ref_mask == 1)  # the same 0/1 RGB masks
    res = DemoSegmenter(small_module())(shots, np.zeros((40, 50, 3), np.uint8))
    assert res["mask"].shape == (40, 50)
    with pytest.raises(ValueError, match="no mask with the same file name"):
        pair_uploaded_supports(images, masks[:4])


@pytest.mark.slow
def test_webui_five_supports_in_browser(browser, app_url, tmp_path, shared_data):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    images, masks = _eiffel_supports(shared_data)
    query = _images(tmp_path)["query"]
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_url)
    done = "() => { const t = document.querySelector('#result_info textarea'); return t && t.value.length > 0; }"
    for attempt in range(4):
        page.locator("#support_files input[type=file]").first.set_input_files([str(p) for p in images])
        page.locator("#support_mask_files input[type=file]").first.set_input_files([str(p) for p in masks])
        page.locator("#query input[type=file]").first.set_input_files(str(query))
        page.locator("#query img").first.wait_for()
        page.wait_for_timeout(3000 * (attempt + 1))
        page.locator("#run").click()
        try:
            page.wait_for_function(done, timeout=30_000)
            if "5 shot(s)" in page.locator("#result_info textarea").input_value():
                break
        except PlaywrightTimeoutError:
            if attempt == 3:
                raise
    info = page.locator("#result_info textarea").input_value()
    assert "5 shot(s)" in info and "query 143x77" in info, info
    page.close()


@pytest.mark.slow
def test_webui_known_user_error_is_a_message_not_a_traceback(browser, app_url, tmp_path, capfd, shared_data):
    images, masks = _eiffel_supports(shared_data)
    query = _images(tmp_path)["query"]
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_url)
    capfd.readouterr()
    err = ""
    for attempt in range(4):
        page.locator("#support_files input[type=file]").first.set_input_files([str(p) for p in images])
        page.locator("#support_mask_files input[type=file]").first.set_input_files([str(p) for p in masks[:4]])
        page.locator("#query input[type=file]").first.set_input_files(str(query))
        page.locator("#query img").first.wait_for()
        page.wait_for_timeout(3000 * (attempt + 1))
        page.locator("#run").click()
        page.wait_for_timeout(5000)
        err += capfd.readouterr().err
        if "no mask with the same file name" in err:
            break
    else:
        raise AssertionError("the app never reported the missing mask")
    assert "no mask with the same file name" in page.content()  # shown in the page
    page.wait_for_timeout(1000)
    err += capfd.readouterr().err
    assert "demo-ui: support image" in err and "Traceback" not in err, err[-2000:]
    page.close()
