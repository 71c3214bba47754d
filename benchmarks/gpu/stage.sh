#!/usr/bin/env bash
# Build the three carries of the GPU campaign (issue 14), here, before any device call:
#   .device/gpu/enc/enc.tgz      text encoder (all-MiniLM-L6-v2, float16), EfficientNet-Lite0 backbone (float16), and
#                                the wheels the device lacks (datasets, dill, multiprocess, monai)        -> call 1
#   .device/gpu/data1/data1.tgz  QaTa-COV19 train (JPEG q80) with reports and split; Kvasir-SEG train (JPEG q80) and
#                                validation (originals)                                                   -> call 2
#   .device/gpu/data2/data2.tgz  QaTa-COV19 validation (the original PNGs); EfficientNet-Lite2 (float16)   -> call 3
# and check what each device call would send against the 64 MiB limit (see benchmarks/gpu/README.md).
#
#   bash benchmarks/gpu/stage.sh            # STAGE_DATA_ROOT=... for other originals (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEV=.device/gpu BUILD=.device/gpu/build
mkdir -p "$BUILD/wheels" "$DEV/enc" "$DEV/cache"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_PROGRESS_BARS=1
started=$SECONDS

# Wheels for the device's Python 3.12 (pure Python; multiprocess has one wheel per Python version). Not carried:
# pydicom and openpyxl (imported only for DICOM files and LViT .xlsx reports, neither of which the campaign reads).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$BUILD/wheels" \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 monai==1.6.1 2>&1 | grep -v "^WARNING: Location" || true
ls "$BUILD/wheels"

[ -e "$BUILD/enc/manifest.json" ] || "$PY" benchmarks/gpu/stage.py encoders "$BUILD/enc"
[ -e "$BUILD/data/manifest.json" ] || "$PY" benchmarks/gpu/stage.py data "$BUILD/data"

mkdir -p "$DEV/data1" "$DEV/data2"
pack() {  # name, file list (relative to $BUILD): $DEV/name/name.tgz holding the files and name.sha256
    local name=$1 list=$2
    (cd "$BUILD" && xargs -d '\n' sha256sum <"$list" >"$name.sha256" && echo "$name.sha256" >>"$list" \
        && tar -czf "../$name/$name.tgz" -T "$list")
}
(cd "$BUILD" && find enc/minilm-fp16 enc/lite0-fp16 wheels -type f | sort >enc.files \
             && { cat data2.files; find enc/lite2-fp16 -type f | sort; } >data2.all \
             && find data -type f | sort | grep -vxF -f data2.files >data1.files)
pack enc enc.files
pack data1 data1.files
pack data2 data2.all
ls -l "$DEV"/*/*.tgz
# The tree travels with every call; the release's weights (54 MB, tracked) leave no room for either carry beside them,
# so the device calls are made with them moved aside (benchmarks/gpu/README.md). Both counts, as they stand now:
RELEASE_WEIGHTS=models/tmca-qata-cov19/model.safetensors
fits=1
for carry in .device/gpu/enc .device/gpu/data1 .device/gpu/data2; do
    echo "a call carrying $carry:"
    "$PY" benchmarks/gpu/stage.py travel "$carry" || true
    "$PY" benchmarks/gpu/stage.py travel "$carry" --without "$RELEASE_WEIGHTS" || fits=0
done
echo "stage.sh: $((SECONDS - started)) s"
[ $fits = 1 ] || { echo "stage.sh: a carry does not fit even without $RELEASE_WEIGHTS" >&2; exit 1; }
