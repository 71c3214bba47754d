"""Tiny TMCA configurations for tests and smoke runs: the real classes at sizes that build and run in a blink."""

from .modeling.configuration_tmca import TmcaConfig


def tiny_config(**overrides) -> TmcaConfig:
    """A TMCA config (ConvNeXt backbone, one-layer BERT) small enough to build and run in well under a second."""
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
    )
    kwargs.update(overrides)
    return TmcaConfig(**kwargs)
