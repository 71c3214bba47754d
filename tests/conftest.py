"""Shared fixtures: tiny random TMCA models and processors (seconds to build), and the real data when present."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tmca_hf import TmcaForImageSegmentation, TmcaImageProcessor, TmcaProcessor, testing_utils
from tmca_hf.encoders import _offline_text_encoder_path


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TINY_IMAGE_SIZE = 64


def run_as_hub_user(script: str, *args, tmp_path: Path, python=sys.executable, timeout: int = 600):
    """
    Run `script` as a Hub user would: a fresh process outside the repository (so `tmca_hf` is not importable from
    the working directory), its own empty HF_HOME, offline, quiet. Returns the finished process.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "HF_", "TRANSFORMERS_", "VIRTUAL_ENV"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    workdir = tmp_path / "hub_user"
    workdir.mkdir(exist_ok=True)
    return subprocess.run([str(python), "-c", textwrap.dedent(script), *map(str, args)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_config(**overrides):
    return testing_utils.tiny_config(**overrides)


def tiny_processor(max_text_length: int = 16) -> TmcaProcessor:
    image_processor = TmcaImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    tokenizer = AutoTokenizer.from_pretrained(_offline_text_encoder_path())
    return TmcaProcessor(image_processor, tokenizer, max_text_length=max_text_length)


def save_tiny_model(folder: Path, **overrides) -> Path:
    """A tiny random model and its processor saved with save_pretrained in `folder` (seed 0)."""
    torch.manual_seed(0)
    TmcaForImageSegmentation(tiny_config(**overrides)).eval().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model_and_processor():
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.2)).eval()
    return model, tiny_processor()


def require_shared_data(folder: Path = SHARED_DATA) -> Path:
    """The real data folder; without it the test skips with a reason, except under CI (CI=true), where it fails."""
    if not folder.is_dir():
        reason = f"real data not found at {folder} (it sits beside the checkout as ../shared/data)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; CI=true, so the real-data tests must run: provide the data there.")
        pytest.skip(reason)
    return folder


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()
