"""`pipeline("image-segmentation", model=FOLDER_OR_HUB_ID, trust_remote_code=True)` for TMCA.

transformers' own image-segmentation pipeline gives a model an image alone; TMCA also reads the report. This
pipeline ships in every saved model folder (its `config.json` names it under `custom_pipelines`), takes the report as
`text=`, and returns what the built-in pipeline returns: one `{"score", "label", "mask"}` per segment, the mask a PIL
image ("L", 0 / 255) at the input image's size.
"""

import numpy as np
from PIL import Image
from transformers import Pipeline

from .imaging_tmca import read_image


class TmcaImageSegmentationPipeline(Pipeline):
    """
    Segment the lesion an image's report describes.

        >>> segmenter = pipeline("image-segmentation", model="org/tmca", trust_remote_code=True)
        >>> segmenter("chest_xray.png", text="unilateral pulmonary infection, one infected area, lower left lung.")
        [{'score': None, 'label': 'lesion', 'mask': <PIL.Image.Image image mode=L size=224x224>}]

    Args (of a call):
        images: a path, a PIL image or a numpy array (gray, RGB, RGBA, 16-bit; DICOM and TIFF files too), or a list.
        text (`str`, *optional*): the report. Without it, a model trained with text dropout segments the image alone
            (`config.supports_text_free_inference`); any other model refuses.
        laterality (`str`, *optional*): whose left and right the report names, "patient" or "image"; see the
            processor's `report_laterality` (default: the report is read as the model was trained).
        threshold (`float`, defaults to 0.5): lesion probability above which a pixel is lesion.

    `score` is None, as in transformers' semantic segmentation; the model's own report-image consistency is in
    `outputs.consistency` when it is called directly.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, text=None, laterality=None, threshold=None, **kwargs):
        if kwargs:
            raise TypeError(f"TmcaImageSegmentationPipeline got unexpected arguments {sorted(kwargs)}; it takes "
                            f"text=, laterality= and threshold=.")
        preprocess = {"text": text, "laterality": laterality}
        postprocess = {} if threshold is None else {"threshold": threshold}
        return preprocess, {}, postprocess

    def preprocess(self, image, text=None, laterality=None):
        pixels = read_image(image, name="the image").pixels  # (H, W, C): read once, for the processor and the size
        inputs = self.processor(images=pixels, text=text, laterality=laterality, return_tensors="pt")
        inputs["target_size"] = pixels.shape[:2]
        return inputs

    def _forward(self, model_inputs):
        target_size = model_inputs.pop("target_size")
        return {"logits": self.model(**model_inputs).logits, "target_size": target_size}

    def postprocess(self, model_outputs, threshold=0.5):
        mask = self.processor.post_process_semantic_segmentation(
            model_outputs["logits"], target_sizes=[model_outputs["target_size"]], threshold=threshold
        )[0]
        pixels = np.asarray(mask.cpu(), dtype=np.uint8) * 255
        return [{"score": None, "label": "lesion", "mask": Image.fromarray(pixels, mode="L")}]


__all__ = ["TmcaImageSegmentationPipeline"]
