"""Shared fixtures: tiny random TMCA models and processors (seconds to build), and the real data when present."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tmca_hf import TmcaConfig, TmcaForImageSegmentation, TmcaImageProcessor, TmcaProcessor
from tmca_hf.encoders import _offline_text_encoder_path


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TINY_IMAGE_SIZE = 64


def tiny_config(**overrides) -> TmcaConfig:
    """A TMCA config small enough to build and run in well under a second."""
    kwargs = dict(
        backbone_config={
            "model_type": "convnext",
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [8, 16, 24, 32],
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        decoder_hidden_sizes=[32, 16, 16, 8],
        decoder_num_attention_heads=2,
        alignment_dim=16,
        image_size=TINY_IMAGE_SIZE,
        max_text_length=16,
    )
    kwargs.update(overrides)
    return TmcaConfig(**kwargs)


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
