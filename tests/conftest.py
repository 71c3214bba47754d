"""Shared fixtures: tiny random TMCA models and processors (seconds to build), and the real data when present."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tmca_hf import TmcaForImageSegmentation, TmcaImageProcessor, TmcaProcessor, testing_utils
from tmca_hf.encoders import _offline_text_encoder_path


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TINY_IMAGE_SIZE = 64


def tiny_config(**overrides):
    return testing_utils.tiny_config(**{"image_size": TINY_IMAGE_SIZE, **overrides})


def tiny_processor(max_text_length: int = 16) -> TmcaProcessor:
    image_processor = TmcaImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    tokenizer = AutoTokenizer.from_pretrained(_offline_text_encoder_path())
    return TmcaProcessor(image_processor, tokenizer, max_text_length=max_text_length)


@pytest.fixture
def tiny_model_and_processor():
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.2)).eval()
    return model, tiny_processor()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (it sits beside the checkout as ../shared/data)")
    return SHARED_DATA
