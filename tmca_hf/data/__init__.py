"""Data for TMCA: image-report-mask triplets from the layouts users bring, as a `datasets.DatasetDict`
(`load_tmca_dataset`; the layouts, the checks and the split names are described in `tmca_hf.data.loading`).

One module per job: `checks` (what every example goes through, and the errors that list what failed), one reader per
raw layout (`lvit`, `flat`, `medvlsm`), `prebuilt` (save_to_disk folders, parquet shards and Hub ids, read by
`datasets` itself), `sources` (citations and licences), `loading` (layout detection and `load_tmca_dataset`) and
`cli` (`tmca-data`).
"""

from .checks import FEATURES, IMAGE_SUFFIXES, DatasetValidationError, InvalidExample, normalize_split_name
from .cli import main
from .loading import LAYOUTS, detect_layout, load_split, load_tmca_dataset, skipped_message


__all__ = [
    "FEATURES",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "DatasetValidationError",
    "InvalidExample",
    "detect_layout",
    "load_split",
    "load_tmca_dataset",
    "main",
    "normalize_split_name",
    "skipped_message",
]
