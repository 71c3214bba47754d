"""Processor for TMCA: the image processor and the report tokenizer behind one call."""

from transformers import BatchFeature, ProcessorMixin, __version__
from transformers.processing_utils import ProcessingKwargs

from .laterality_tmca import CONVENTIONS, TRAINING_CONVENTION, convert_laterality


class TmcaProcessorKwargs(ProcessingKwargs, total=False):
    """Tokenizer defaults: every report padded or cut to the processor's `max_text_length` tokens."""

    _defaults = {"text_kwargs": {"padding": "max_length", "truncation": True, "return_token_type_ids": False}}


class TmcaProcessor(ProcessorMixin):
    r"""
    Wraps a [`TmcaImageProcessor`] and the text encoder's tokenizer. Reports are padded or cut to `max_text_length`
    tokens, the length the model was trained with.

    Args:
        image_processor ([`TmcaImageProcessor`]): prepares images and masks.
        tokenizer ([`PreTrainedTokenizerBase`]): the text encoder's tokenizer.
        max_text_length (`int`, *optional*, defaults to 24): tokens per report.
        report_laterality (`str`, *optional*, defaults to `"image"`): the side convention of the reports the model was
            trained with. QaTa-COV19's reports say "left lung" for the left of the image, which on a standard frontal
            chest X-ray is the patient's right (`"image"`); clinicians name the patient's side (`"patient"`).
    """

    attributes = ["image_processor", "tokenizer"]
    tokenizer_class = "AutoTokenizer"
    if int(__version__.split(".")[0]) < 5:  # v4 finds the image processor by this name; v5 by its registration
        image_processor_class = "AutoImageProcessor"

    def __init__(
        self, image_processor=None, tokenizer=None, max_text_length: int = 24,
        report_laterality: str = TRAINING_CONVENTION, **kwargs,
    ):
        if report_laterality not in CONVENTIONS:
            raise ValueError(f"report_laterality must be one of {CONVENTIONS}, got {report_laterality!r}.")
        self.max_text_length = max_text_length
        self.report_laterality = report_laterality
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self, images=None, text=None, segmentation_maps=None, return_tensors="pt", laterality=None, **kwargs
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL, numpy, torch, or file paths); see [`TmcaImageProcessor.preprocess`].
            text (`str` or `list[str]`, *optional*): one report per image. `None` for text-free inference (models
                trained with `text_dropout`, or image-only models).
            segmentation_maps: optional binary masks, one per image (training and evaluation).
            laterality (`str`, *optional*): the side convention `text` is written in, `"patient"` (as clinicians
                write) or `"image"`; left and right are swapped when it differs from `report_laterality`. Default:
                the model's own convention (no change).

        Returns:
            `BatchFeature` with `pixel_values`, and `input_ids` + `attention_mask` (B, max_text_length) when `text` is
            given, and `labels` when masks are given.
        """
        if images is None:
            raise ValueError("TmcaProcessor needs images: the model segments images, guided by their reports.")
        data = dict(self.image_processor(images, segmentation_maps=segmentation_maps, return_tensors=return_tensors))
        if text is not None:
            encoding = self.encode_reports(text, return_tensors=return_tensors, laterality=laterality, **kwargs)
            if len(encoding["input_ids"]) != len(data["pixel_values"]):
                raise ValueError(
                    f"Got {len(encoding['input_ids'])} reports for {len(data['pixel_values'])} images; expected one "
                    f"report per image."
                )
            data.update(encoding)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode_reports(self, text, return_tensors="pt", laterality=None, **kwargs) -> BatchFeature:
        """
        Tokenise reports as the model was trained: padded or cut to `max_text_length` tokens. Keyword overrides
        (`padding="longest"`, `max_length=32`, or `text_kwargs={...}`) are merged over these defaults the way the
        transformers processors merge them. `laterality` as in `__call__`.
        """
        explicit_length = "max_length" in kwargs or "max_length" in kwargs.get("text_kwargs", {})
        text_kwargs = self._merge_kwargs(
            TmcaProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, return_tensors=return_tensors, **kwargs
        )["text_kwargs"]
        if not explicit_length:
            text_kwargs["max_length"] = self.max_text_length
        reports = self._check_reports(text)
        if laterality is not None:
            reports = [convert_laterality(report, laterality, self.report_laterality) for report in reports]
        return BatchFeature(data=dict(self.tokenizer(reports, **text_kwargs)), tensor_type=return_tensors)

    @staticmethod
    def _check_reports(text) -> list:
        reports = [text] if isinstance(text, str) else text
        if not isinstance(reports, (list, tuple)):
            raise TypeError(f"text must be a report string or a list of them, got {type(text).__name__}.")
        bad = [index for index, report in enumerate(reports) if not isinstance(report, str)]
        if bad:
            raise TypeError(
                f"report {bad[0]} is a {type(reports[bad[0]]).__name__}; expected a string for every report "
                f"({len(bad)} of {len(reports)} are not)."
            )
        empty = [index for index, report in enumerate(reports) if not report.strip()]
        if empty:
            raise ValueError(
                f"report {empty[0]} is empty ({len(empty)} of {len(reports)}); pass text=None for text-free "
                f"inference instead of empty strings."
            )
        return list(reports)

    def post_process_semantic_segmentation(self, *args, **kwargs):
        """Forwards to [`TmcaImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["TmcaProcessor"]
