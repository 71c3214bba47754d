"""train.py: a short run writes a loadable Hub-ready folder; a killed run resumes to the same end; two processes train."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor


SAMPLES = REPO_ROOT / "samples" / "qata_cov19"
TINY_RUN = [
    "--dataset", str(SAMPLES), "--image_size", "64", "--max_train_samples", "8", "--max_eval_samples", "4",
    "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--decoder_hidden_sizes", "32", "16", "16", "8",
    "--final_eval_text_modes", "report", "--seed", "7",
]
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"the repo's sample data is missing at {SAMPLES}")


def launch(*args, processes=1):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        command = ["--cpu", "--num_processes", "1"]
    else:
        command = ["--multi_gpu", "--num_processes", str(processes)]
        env["ACCELERATE_USE_CPU"] = "true"
    command = [sys.executable, "-m", "accelerate.commands.launch", *command, "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "train.py"), *TINY_RUN, *args]
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
    assert model.config.image_size == 64 and processor.image_processor.size == {"height": 64, "width": 64}
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "dice_per_image" in card and "| report | 4 |" in card
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["evaluation"][0]["num_images"] == 4
    assert "Serve it:" in output and not (folder / "best").exists()
    refused = launch("--max_train_steps", "2", "--output_dir", str(folder))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "already holds a trained model" in out


def test_killed_run_resumes_from_its_last_checkpoint_and_ends_like_an_unbroken_run(tmp_path):
    steps = ["--max_train_steps", "6", "--checkpointing_steps", "1", "--text_dropout", "0.3"]  # 4 steps per epoch: resume crosses an epoch
    finish(launch(*steps, "--output_dir", str(tmp_path / "unbroken")))

    broken = launch(*steps, "--output_dir", str(tmp_path / "broken"))
    checkpoints = tmp_path / "broken" / "checkpoints"
    deadline = time.time() + 600
    while not any(int(path.name[5:]) >= 2 and (path / "best.json").exists() for path in checkpoints.glob("step_*")):
        assert broken.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(broken.pid, signal.SIGKILL)  # the launcher and the training process it started
    broken.communicate()
    assert not (checkpoints / "step_6").exists(), "the run was not interrupted"

    kept = sorted(path.name for path in (tmp_path / "unbroken" / "checkpoints").iterdir())
    assert kept == ["step_5", "step_6"], f"--checkpoints_total_limit 2 should keep the newest two, kept {kept}"
    output = finish(launch(*steps, "--output_dir", str(tmp_path / "broken"), "--resume_from_checkpoint", "latest"))
    assert "Resumed from checkpoint" in output
    unbroken = load_file(tmp_path / "unbroken" / "checkpoints" / "step_6" / "model.safetensors")
    resumed = load_file(checkpoints / "step_6" / "model.safetensors")
    assert unbroken.keys() == resumed.keys()
    worst = max((unbroken[k].float() - resumed[k].float()).abs().max().item() for k in unbroken)
    assert worst == 0.0, f"resumed weights differ from the unbroken run's by up to {worst}"


def test_two_cpu_processes_train_one_model(tmp_path):
    output = finish(launch("--max_train_steps", "2", "--output_dir", str(tmp_path / "ddp"), processes=2))
    assert AutoModel.from_pretrained(tmp_path / "ddp") is not None
    assert "total batch size 4" in output
