"""Publishing: a saved model folder goes to the Hub as it is, so what was tested locally is what users download."""

from pathlib import Path

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
