"""Publishing: a saved model folder goes to the Hub as it is, so what was tested locally is what users download."""

from pathlib import Path

import torch
from huggingface_hub import HfApi


def push_folder_to_hub(folder, repo_id: str, private: bool = False, repo_type: str = "model", token=None,
                       commit_message: str = "Upload TMCA", ignore_patterns=("checkpoints/**",)) -> str:
    """
    Create `repo_id` if needed and upload `folder` (a `save_pretrained` folder) in one commit, less the training
    run's resumable checkpoints (`ignore_patterns`), which are for resuming, not for users.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() and repo_type == "model":
        raise FileNotFoundError(f"{folder} has no config.json: expected a folder written by save_pretrained.")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        commit_message=commit_message,
        repo_type=repo_type,
        ignore_patterns=list(ignore_patterns),
    )
    return str(url)


def save_release(model, processor, folder, dtype=torch.float16) -> Path:
    """
    Save `model` and `processor` into the model folder `folder` as the release is kept: every floating-point weight
    stored in 16 bits (`dtype`, half the download) and `config.json` asking for float32, so `from_pretrained`
    computes in float32 wherever dtype="auto". The folder's code files are replaced by the ones the package ships
    now (stale ones removed); what else it holds (model card, eval_results.json, train_log.jsonl,
    training_args.json) is kept. The model is handed back in float32.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.py"):
        stale.unlink()
    model.to(dtype).save_pretrained(folder)
    model.to(torch.float32)
    model.config.dtype = torch.float32
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
