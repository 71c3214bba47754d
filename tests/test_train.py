"""train.py: a short run writes a loadable Hub-ready folder; a killed run resumes to the same end; two processes train."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, tiny_config, tiny_processor
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from tmca_hf import TmcaForImageSegmentation
from tmca_hf.data import load_tmca_dataset
from tmca_hf.training_data import DecodedSplit


SAMPLES = REPO_ROOT / "samples" / "qata_cov19"
TINY_DATA_RUN = [
    "--dataset", str(SAMPLES), "--max_train_samples", "8", "--max_eval_samples", "4", "--per_device_train_batch_size", "2",
    "--per_device_eval_batch_size", "4", "--final_eval_text_modes", "report", "--seed", "7",
]
TINY_RUN = [*TINY_DATA_RUN, "--image_size", "64", "--decoder_hidden_sizes", "32", "16", "16", "8"]  # a new tiny model
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"the repo's sample data is missing at {SAMPLES}")


def load_train_script():
    spec = importlib.util.spec_from_file_location("tmca_train_script", REPO_ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(*args, processes=1, run=TINY_RUN):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        command = ["--cpu", "--num_processes", "1"]
    else:
        command = ["--multi_gpu", "--num_processes", str(processes)]
        env["ACCELERATE_USE_CPU"] = "true"
    command = [sys.executable, "-m", "accelerate.commands.launch", *command, "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "train.py"), *run, *args]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def test_two_step_run_writes_a_loadable_folder_with_model_card(tmp_path):
    output = finish(launch("--max_train_steps", "2", "--output_dir", str(tmp_path / "run")))
    folder = tmp_path / "run"
    model = AutoModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.image_processor.size == {"height": 64, "width": 64} and processor.max_text_length == 24
    assert model.config.alignment_levels == [16, 8, 4] and not hasattr(model.config, "image_size")
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "dice_per_image" in card and "| report | 4 |" in card
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["evaluation"][0]["num_images"] == 4
    assert "Serve it:" in output and not (tmp_path / "run-checkpoints" / "best").exists()
    assert 'pip install -e ".[space]" && python space/app.py' in output, "the hint names the Space's install step"
    records = [line for line in output.split("\n") if "\"epoch\"" in line]  # a \r-updated bar splits no line
    assert records and all(line.startswith("{") and line.endswith("}") for line in records), (
        "in a log (no terminal), each epoch's record is a line of its own, not glued to a progress bar")
    for noise in ("Writing model shards", "Loading weights", "INFO accelerate", "deprecated", "Deleting"):
        assert noise not in output, f"the run printed {noise!r}: one bar and one line per epoch is enough"
    assert not (folder / "checkpoints").exists(), "the resumable checkpoints belong beside the model folder"
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert log and all(record["images_per_second"] > 0 and 0 <= record["data_wait_fraction"] < 1 for record in log)
    refused = launch("--max_train_steps", "2", "--output_dir", str(folder))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "already holds a trained model" in out


def last_checkpoint_weights(run) -> dict:
    checkpoints = sorted((run.parent / f"{run.name}-checkpoints" / "checkpoints").glob("checkpoint_*"),
                         key=lambda path: int(path.name.split("_")[1]))
    return load_file(checkpoints[-1] / "model.safetensors")


def validation_records(run) -> list:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in ("images_per_second", "data_wait_fraction")} for record in records]


@pytest.mark.parametrize("checkpointing_steps, kill_after", [("1", 2), ("4", 1)], ids=["mid-epoch", "epoch-end"])
def test_killed_run_resumes_from_its_last_checkpoint_and_ends_like_an_unbroken_run(tmp_path, checkpointing_steps, kill_after):
    # 4 steps per epoch: the mid-epoch case resumes across an epoch; the epoch-end one resumes after a validation.
    steps = ["--max_train_steps", "8", "--checkpointing_steps", checkpointing_steps, "--text_dropout", "0.3"]
    finish(launch(*steps, "--output_dir", str(tmp_path / "unbroken")))

    broken = launch(*steps, "--output_dir", str(tmp_path / "broken"))
    checkpoints = tmp_path / "broken-checkpoints" / "checkpoints"
    deadline = time.time() + 600
    while len(list(checkpoints.glob("checkpoint_*/custom_checkpoint_0.pkl"))) < kill_after:
        assert broken.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.02)
    os.killpg(broken.pid, signal.SIGKILL)  # the launcher and the training process it started
    broken.communicate()
    assert not (tmp_path / "broken" / "config.json").exists(), "the run was not interrupted"

    kept = sorted(path.name for path in (tmp_path / "unbroken-checkpoints" / "checkpoints").iterdir())
    assert len(kept) == 2, f"--checkpoints_total_limit 2 should keep the newest two, kept {kept}"
    output = finish(launch(*steps, "--output_dir", str(tmp_path / "broken"), "--resume_from_checkpoint", "latest"))
    assert "Resumed from checkpoint" in output
    unbroken, resumed = last_checkpoint_weights(tmp_path / "unbroken"), last_checkpoint_weights(tmp_path / "broken")
    assert unbroken.keys() == resumed.keys()
    worst = max((unbroken[k].float() - resumed[k].float()).abs().max().item() for k in unbroken)
    assert worst == 0.0, f"resumed weights differ from the unbroken run's by up to {worst}"
    assert validation_records(tmp_path / "broken") == validation_records(tmp_path / "unbroken")
    best = [json.loads((tmp_path / run / "eval_results.json").read_text())["best"] for run in ("unbroken", "broken")]
    assert best[0] == best[1]


def test_resuming_without_a_checkpoint_and_an_unwritable_output_say_so_in_one_line(tmp_path):
    # (`accelerate launch` adds its own CalledProcessError traceback for any failing script; train.py adds none.)
    finish(launch("--max_train_steps", "2", "--checkpointing_steps", "none", "--output_dir", str(tmp_path / "run")))
    refused = launch("--max_train_steps", "2", "--output_dir", str(tmp_path / "run"))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "already holds a trained model" in out and "resume" not in out
    resumed = launch("--max_train_steps", "2", "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "latest")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode != 0 and "no complete checkpoint under" in out and 'train.py", line' not in out
    a_file = tmp_path / "a_file"  # a folder that cannot be made (as a read-only or full disk would refuse it)
    a_file.write_text("")
    blocked = launch("--max_train_steps", "2", "--output_dir", str(a_file / "run"))
    out, _ = blocked.communicate(timeout=300)
    assert blocked.returncode != 0 and f"Not a directory: {a_file / 'run'}" in out and 'train.py", line' not in out


def test_two_cpu_processes_train_one_model(tmp_path):
    output = finish(launch("--max_train_steps", "2", "--output_dir", str(tmp_path / "ddp"), processes=2))
    model = AutoModel.from_pretrained(tmp_path / "ddp")
    assert model.config.decoder_hidden_sizes == [32, 16, 16, 8] and "total batch size 4" in output


def test_per_epoch_validation_is_float32_under_a_bf16_accelerator():
    # Accelerate wraps a prepared model's forward in bf16 autocast for good; selection must score what is reported.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from torch.utils.data import DataLoader

    train_script = load_train_script()
    split = load_tmca_dataset(SAMPLES, splits=["validation"])["validation"].select(range(8))
    decoded = DecodedSplit(split, tiny_processor())
    scores = {}
    for precision in ("no", "bf16"):
        torch.manual_seed(0)
        model = TmcaForImageSegmentation(tiny_config())
        decoded.cache_report_states(model)
        AcceleratorState._reset_state(reset_partial_state=True)  # a process holds one precision otherwise
        accelerator = Accelerator(cpu=True, mixed_precision=precision)
        prepared, loader = accelerator.prepare(model, DataLoader(decoded, batch_size=4, collate_fn=decoded.collate))
        dice = train_script.validation_dice(prepared, loader, accelerator)
        assert prepared.training, "validation hands the model back in train mode"
        with torch.no_grad():  # in eval mode: a training forward would move the batch-norm statistics
            logits = prepared.eval()(**{k: v for k, v in decoded.collate([0, 1]).items() if k != "labels"}).logits
        scores[precision] = (dice, logits)
    assert not torch.equal(scores["no"][1], scores["bf16"][1]), "the prepared bf16 forward must differ, or this sees nothing"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert scores["bf16"][0] == scores["no"][0]


def test_the_jpeg_copys_forward_replays_the_batchs_text_dropout_and_adds_the_stability_term():
    from tmca_hf.training_data import JpegStability

    train_script = load_train_script()
    split = load_tmca_dataset(SAMPLES, splits=["train"])["train"].select(range(8))
    decoded = DecodedSplit(split, tiny_processor())
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.5))  # in train mode, as train.py steps it
    batch = decoded.collate(list(range(8)))

    class Unchanged(JpegStability):  # a copy equal to the batch: any difference would come from the random draws
        def view(self, pixel_values):
            return pixel_values.clone()

    stability = Unchanged(1.0, [0.5] * 3, [0.5] * 3)
    torch.manual_seed(1)
    outputs, loss = train_script.training_step_loss(model, batch, stability, torch.device("cpu"))
    assert loss.item() == pytest.approx(outputs.loss.item(), abs=1e-6), "the same draws: the two predictions are equal"
    torch.manual_seed(1)
    plain, _ = train_script.training_step_loss(model, batch, None, torch.device("cpu"))
    torch.testing.assert_close(plain.logits, outputs.logits)
    torch.manual_seed(1)
    jpeg_outputs, with_jpeg = train_script.training_step_loss(
        model, batch, JpegStability(1.0, [0.5] * 3, [0.5] * 3), torch.device("cpu")
    )
    assert with_jpeg.item() > jpeg_outputs.loss.item() + 1e-6, "a real JPEG copy adds a positive divergence"


def test_best_per_epoch_dice_equals_the_final_evaluation_of_the_chosen_model(tmp_path):
    # At 224 (QaTa's own size) the model's resolution is each image's original size: both routes must agree exactly.
    finish(launch("--image_size", "224", "--max_train_steps", "4", "--output_dir", str(tmp_path / "run")))
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    final = results["evaluation"][0]
    assert final["text_mode"] == "report"
    for key in ("dice_per_image", "dice_pooled", "iou_per_image", "iou_pooled"):
        assert results["best"][key] == pytest.approx(final[key], abs=1e-9), key


KVASIR_SAMPLES = REPO_ROOT / "samples" / "kvasir_seg"


def test_two_datasets_train_one_model_validated_on_each(tmp_path):
    output = finish(launch("--dataset", str(SAMPLES), str(KVASIR_SAMPLES), "--max_train_steps", "2",
                           "--checkpointing_steps", "none", "--output_dir", str(tmp_path / "joint")))
    assert "14 training and 8 validation examples" in output  # 8 + 6 Kvasir-SEG images; 4 + 4 validation images
    record = json.loads((tmp_path / "joint" / "train_log.jsonl").read_text().splitlines()[-1])
    per_dataset = record["validation"]
    assert sorted(per_dataset) == ["kvasir_seg", "qata_cov19"]
    mean = sum(scores["dice_per_image"] for scores in per_dataset.values()) / 2
    assert record["dice_per_image"] == pytest.approx(mean)  # selection weighs each dataset the same
    results = json.loads((tmp_path / "joint" / "eval_results.json").read_text())
    assert [(r["dataset"], r["text_mode"], r["num_images"]) for r in results["evaluation"]] == [
        ("qata_cov19", "report", 4), ("kvasir_seg", "report", 4)]
    assert json.loads((tmp_path / "joint" / "training_args.json").read_text())["dataset"] == [str(SAMPLES), str(KVASIR_SAMPLES)]
    assert "Validation (kvasir_seg, validation, 4 images" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is visible")
@pytest.mark.parametrize("flags, message", [
    (["--torch_compile"], "--torch_compile is part of the CUDA fast path and this machine has no CUDA device"),
    (["--torch_compile", "reduce-overhead"], "--torch_compile is part of the CUDA fast path"),
    (["--fused_adamw"], "--fused_adamw is part of the CUDA fast path"),
    (["--torch_compile", "fastest"], "invalid choice: 'fastest'"),
    (["--dataset", str(SAMPLES), str(SAMPLES)], "--dataset names a source twice"),
    (["--dataset", str(SAMPLES), str(REPO_ROOT / "samples" / "x" / "qata_cov19")], "must have distinct names"),
])
def test_fast_path_and_dataset_flags_are_checked_before_any_work(capsys, flags, message):
    train_script = load_train_script()
    with pytest.raises(SystemExit):
        train_script.parse_args(flags)
    assert message in capsys.readouterr().err


def test_a_model_to_fine_tune_brings_its_own_architecture_and_the_flags_that_would_set_one_are_refused(capsys):
    train_script = load_train_script()
    with pytest.raises(SystemExit):
        train_script.parse_args(["--model_name_or_path", "models/x", "--text_dropout", "0.3", "--image_size", "256"])
    error = capsys.readouterr().err
    assert "--image_size, --text_dropout set up a new model" in error and "models/x brings its own" in error
    args = train_script.parse_args(["--model_name_or_path", "models/x", "--learning_rate", "1e-4"])
    assert args.text_dropout is None and args.alignment_levels is None and args.image_size is None
    assert args.learning_rate == 1e-4, "training flags still apply"


def test_fine_tuning_a_saved_model_records_that_its_architecture_came_with_it(tmp_path):
    from conftest import save_tiny_model

    base = save_tiny_model(tmp_path / "base", text_dropout=0.2)
    finish(launch("--model_name_or_path", str(base), "--max_train_steps", "1", "--output_dir", str(tmp_path / "tuned"),
                  run=TINY_DATA_RUN))  # the saved model brings its size and decoder
    recorded = json.loads((tmp_path / "tuned" / "training_args.json").read_text())
    assert recorded["model_name_or_path"] == str(base) and recorded["text_dropout"] is None
    assert AutoModel.from_pretrained(tmp_path / "tuned").config.text_dropout == 0.2
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert f"--model_name_or_path {base}" in card and "--image_size" not in card


def test_one_dataset_keeps_the_single_source_arguments():
    args = load_train_script().parse_args(["--dataset", str(SAMPLES)])
    assert args.dataset == str(SAMPLES) and args.torch_compile is None and not args.fused_adamw
