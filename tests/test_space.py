"""The Gradio Space (space/app.py) at three depths: its `segment` function, the launched server answered by
gradio_client (good, concurrent and bad requests), and a real browser (Debian chromium driven by playwright)."""

import importlib.util
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA, tiny_config, tiny_processor
from test_predict import png_bytes, png_header_only, write_dicom, write_format_zoo
from tmca_hf import TmcaForImageSegmentation


gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

SAMPLES = REPO_ROOT / "samples"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "outputs" / "screenshots" / "space.png"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPORT = "bilateral pulmonary infection, two infected areas, middle lower left lung"


def _load_app():
    spec = importlib.util.spec_from_file_location("tmca_space_app", REPO_ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """space/app.py with a tiny random model saved and loaded back the way the Space loads it (AutoModel, remote code)."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    module = _load_app()
    model_dir = tmp_path_factory.mktemp("tiny-tmca")
    torch.manual_seed(0)
    TmcaForImageSegmentation(tiny_config(text_dropout=0.2)).eval().save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    assert module.load(str(model_dir)) is None
    module.model_dir = model_dir
    yield module
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def samples_dir():
    """The repository's samples/, else the shared data beside the checkout (same layouts)."""
    for folder in (SAMPLES, SHARED_DATA):
        if folder.is_dir():
            return folder
    pytest.skip(f"no sample images: neither {SAMPLES} nor {SHARED_DATA} exists")


@pytest.fixture(scope="module")
def server(app, samples_dir):
    """The app launched once for the module on a free port; yields its URL."""
    demo = app.build_demo(str(app.model_dir), samples_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            **app.launch_kwargs())
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict:
    """{case: (path, report, expected message)} for every input the app must refuse with a message."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.png").write_text("this is a text file with a .png name")
    good = folder / "good.png"
    good.write_bytes(png_bytes())
    (folder / "truncated.png").write_bytes(png_bytes()[:-60])
    Image.new("L", (1, 1)).save(folder / "one_pixel.png")
    (folder / "huge.png").write_bytes(png_header_only(20000, 20000))
    write_dicom(folder / "no_pixels.dcm")
    return {
        "not-an-image": (folder / "notes.png", REPORT, "not an image file"),
        "truncated": (folder / "truncated.png", REPORT, "damaged or truncated"),
        "1x1": (folder / "one_pixel.png", REPORT, "expected at least 32 pixels"),
        "20000x20000": (folder / "huge.png", REPORT, "too large"),
        "dicom-without-pixels": (folder / "no_pixels.dcm", REPORT, "without pixel data"),
        "emoji-only-report": (good, "🫁🦠😷", "no word the model's tokenizer knows"),
    }


def _check_result(result, image_size, levels):
    (display, [(display_mask, label)]), mask_path, gallery, pixels, percent, latency_ms, notes = result
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == image_size and set(np.unique(mask)) <= {0, 255}
    assert pixels == int((mask == 255).sum()) and percent == pytest.approx(100 * pixels / mask.size, abs=1e-3)
    assert label == "lesion" and display.shape[:2] == display_mask.shape and display.dtype == np.uint8
    assert len(gallery) == len(levels) and all(caption.startswith(f"stride {s}") for (_, caption), s in zip(gallery, levels))
    assert latency_ms > 0 and "Prediction took" in notes


# ------------------------------------------------------------------------------------------------ the function


def test_segment_on_sample_images(app, samples_dir):
    examples = app.find_examples(samples_dir)
    if not examples:
        pytest.skip(f"{samples_dir} has no QaTa-COV19 (flat) or Kvasir-SEG (medvlsm) examples")
    assert {Path(path).parent.parent.name for path, _, _ in examples} >= {"qata_cov19", "kvasir_seg"}
    levels = app._loaded.model.config.alignment_levels
    for path, report, threshold in examples:
        result = app.segment(path, report, threshold)
        _check_result(result, Image.open(path).size[::-1], levels)
    # A lower threshold can only grow the mask.
    path, report, _ = examples[0]
    assert app.segment(path, report, 0.1)[3] >= app.segment(path, report, 0.9)[3]


def test_segment_accepts_every_format(app, tmp_path):
    sizes = write_format_zoo(tmp_path)
    for name, size in sizes.items():
        _check_result(app.segment(str(tmp_path / name), REPORT, 0.5), size, app._loaded.model.config.alignment_levels)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_segment_reports(app, tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 64), dtype=np.uint8)).save(path)
    long_report = ("bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung. " * 120)[:10_000]
    notes = app.segment(str(path), long_report, 0.5)[-1]
    assert "10,000 characters" in notes and "reads only its first 14 tokens" in notes
    assert "text-free prediction" in app.segment(str(path), "", 0.5)[-1]
    monkeypatch.setattr(app._loaded.model.config, "text_dropout", 0.0)  # now a model that needs a report
    with pytest.raises(gr.Error, match="The report is empty, and this model needs one"):
        app.segment(str(path), "  ", 0.5)
    with pytest.raises(gr.Error, match="threshold must lie strictly between 0 and 1"):
        app.segment(str(path), REPORT, 1.5)
    with pytest.raises(gr.Error, match="Upload an image first"):
        app.segment(None, REPORT, 0.5)


@pytest.mark.parametrize(
    "case", ["not-an-image", "truncated", "1x1", "20000x20000", "dicom-without-pixels", "emoji-only-report"]
)
def test_segment_refuses_bad_inputs(app, bad_files, case):
    path, report, message = bad_files[case]
    with pytest.raises(gr.Error, match=message):
        app.segment(str(path), report, 0.5)


def test_missing_model_says_what_to_do(tmp_path):
    """Without a model the app still builds, shows what to do, and answers requests with that message."""
    module = _load_app()
    missing = tmp_path / "outputs" / "tmca-qata-sample"
    demo = module.build_demo(str(missing))
    assert isinstance(demo, gr.Blocks)
    assert "README" in module._load_problem and "TMCA_MODEL" in module._load_problem
    with pytest.raises(gr.Error, match="No TMCA model at"):
        module.segment(str(tmp_path / "x.png"), REPORT, 0.5)


# -------------------------------------------------------------------------------------------------- the server


def test_server_answers_a_client(client, samples_dir, app):
    path, report, _ = app.find_examples(samples_dir)[0]
    overlay, mask_file, gallery, pixels, percent, latency_ms, notes = client.predict(
        gradio_client.handle_file(path), report, 0.5, api_name="/segment"
    )
    mask = np.asarray(Image.open(mask_file))
    assert mask.shape == Image.open(path).size[::-1] and pixels == int((mask == 255).sum())
    assert Path(overlay["image"]).is_file() and [note["label"] for note in overlay["annotations"]] == ["lesion"]
    assert len(gallery) == len(app._loaded.model.config.alignment_levels)
    assert latency_ms > 0 and Path(path).name in notes
    print(f"\napp-measured prediction latency (tiny model, {Path(path).name}): {latency_ms:.1f} ms")


def test_server_answers_20_concurrent_requests(client, tmp_path):
    paths = []
    for index in range(20):
        paths.append(tmp_path / f"case_{index}.png")
        Image.fromarray(np.full((48 + index, 64), 10 * index, np.uint8)).save(paths[-1])

    def ask(path):
        return client.predict(gradio_client.handle_file(str(path)), REPORT, 0.5, api_name="/segment")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(ask, paths))
    assert len(results) == 20
    for index, result in enumerate(results):
        assert np.asarray(Image.open(result[1])).shape == (48 + index, 64)


def test_server_keeps_serving_after_bad_inputs(client, bad_files):
    for case, (path, report, message) in bad_files.items():
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(gradio_client.handle_file(str(path)), report, 0.5, api_name="/segment")
    oversized = bad_files["emoji-only-report"][0].with_name("oversized.png")
    with open(oversized, "wb") as file:
        file.truncate(101 * 2**20)  # sparse: above the app's 100 MB upload limit without writing 100 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(gradio_client.handle_file(str(oversized)), REPORT, 0.5, api_name="/segment")
    long_report = "right lung " * 1000
    path = bad_files["emoji-only-report"][0]
    notes = client.predict(gradio_client.handle_file(str(path)), long_report, 0.5, api_name="/segment")[-1]
    assert "the model reads only its first" in notes  # a good request after the bad ones, with a notice


# ------------------------------------------------------------------------------------------------- the browser


def test_browser_example_to_overlay(server):
    """Open the app in chromium, click an example, segment, wait for the overlay, and save a screenshot."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server)
            page.locator(".tr-body").filter(has_text=".png").first.click()  # a QaTa-COV19 example (PNG)
            sync_api.expect(page.locator("#report textarea")).not_to_have_value("", timeout=10_000)
            page.locator("#segment").click()
            overlay = page.locator("#overlay img").first
            overlay.wait_for(state="visible", timeout=30_000)
            sync_api.expect(page.locator("#notes")).to_contain_text("Prediction took", timeout=30_000)
            page.locator("#alignment-maps img").first.wait_for(state="visible", timeout=10_000)
            for close in page.locator(".toast-close").all():  # notices (e.g. a cut report) would cover the overlay
                close.click()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert overlay.is_visible() and overlay.bounding_box()["width"] > 100
            sync_api.expect(page.locator("#mask-file")).to_contain_text("_mask")  # the downloadable mask PNG
        finally:
            browser.close()
    print(f"\nscreenshot: {SCREENSHOT}", file=sys.stderr)
