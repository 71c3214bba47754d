"""Tests for tmca_hf.dataset_publishing: saving (arrow, parquet) and reading back, overwrite rules, card, push."""

import datasets
import numpy as np
import pytest
from test_data import SAMPLES, make_flat

from tmca_hf.data import FEATURES, detect_layout, load_tmca_dataset
from tmca_hf.dataset_publishing import make_dataset_card, push_tmca_dataset, save_tmca_dataset


datasets.disable_progress_bars()


@pytest.mark.parametrize("format", ["arrow", "parquet"])
def test_save_and_load_round_trip(tmp_path, format):
    source = load_tmca_dataset(make_flat(tmp_path / "flat"))
    (tmp_path / "flat" / "README.md").write_text("Made from QaTa-COV19 with LViT reports.")
    source = load_tmca_dataset(tmp_path / "flat")
    output = save_tmca_dataset(source, tmp_path / "out", format=format)
    assert detect_layout(output) == ("disk" if format == "arrow" else "parquet")
    loaded = load_tmca_dataset(output)
    assert list(loaded) == ["train", "validation"]
    for split in source:
        for column in ("id", "text"):
            assert loaded[split][column] == source[split][column]
        for left, right in zip(loaded[split], source[split]):
            assert np.array_equal(np.asarray(left["mask"]), np.asarray(right["mask"]))
            assert np.array_equal(np.asarray(left["image"]), np.asarray(right["image"]))
    assert "degerli2021covid" in loaded["train"].info.citation and "li2023lvit" in loaded["train"].info.citation
    if format == "parquet":
        assert (output / "data" / "train-00000-of-00001.parquet").is_file() and (output / "README.md").is_file()
        hub_style = datasets.load_dataset(str(output), cache_dir=str(tmp_path / "cache"))  # what Hub users do
        assert hub_style["validation"]["id"] == ["b0", "b1"] and hub_style["train"].features == FEATURES


def test_refuses_to_overwrite(tmp_path):
    dd = load_tmca_dataset(make_flat(tmp_path / "flat"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        save_tmca_dataset(dd, tmp_path / "busy")
    with pytest.raises(FileExistsError, match="does not look like a dataset saved"):
        save_tmca_dataset(dd, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    save_tmca_dataset(dd, tmp_path / "out")
    save_tmca_dataset(datasets.DatasetDict({"train": dd["train"]}), tmp_path / "out", format="parquet", overwrite=True)
    assert list(load_tmca_dataset(tmp_path / "out")) == ["train"]
    on_disk = load_tmca_dataset(save_tmca_dataset(dd, tmp_path / "disk"))
    with pytest.raises(ValueError, match="the dataset being saved is read from it"):
        save_tmca_dataset(on_disk, tmp_path / "disk", overwrite=True)
    (tmp_path / "empty").mkdir()
    save_tmca_dataset(dd, tmp_path / "empty")  # an empty folder is fine


def test_dataset_card(tmp_path):
    from huggingface_hub import DatasetCard

    dd = load_tmca_dataset(SAMPLES / "kvasir_seg")
    card = make_dataset_card(dd, repo_id="someone/kvasir-tmca")
    metadata = DatasetCard(card).data
    assert metadata.license == "other" and metadata.task_categories == ["image-segmentation"]
    assert metadata.size_categories == ["n<1K"] and metadata.pretty_name == "kvasir-tmca"
    for expected in ("| train | 6 |", "| validation | 4 |", "255 = lesion", "Research use only", "jha2020kvasir",
                     "poudel2024exploring", "MIT licence", 'load_dataset("someone/kvasir-tmca")', "medvlsm prompt p6"):
        assert expected in card


def test_push_uploads_the_card_then_the_data(monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create_repo", repo_id, repo_type, private))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, repo_type, commit_message):
            calls.append(("upload_file", path_in_repo, path_or_fileobj.decode()))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    def fake_push_to_hub(self, repo_id, **kwargs):
        calls.append(("push", repo_id, kwargs))

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push_to_hub)
    dd = load_tmca_dataset(SAMPLES / "qata_cov19")
    push_tmca_dataset(dd, "someone/qata-sample", private=True)
    assert [call[0] for call in calls] == ["create_repo", "upload_file", "push"]
    assert calls[0] == ("create_repo", "someone/qata-sample", "dataset", True)
    assert calls[1][1] == "README.md" and "degerli2021covid" in calls[1][2] and "| train | 40 |" in calls[1][2]
    assert calls[2][2]["private"] is True
