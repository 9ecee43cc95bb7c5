import pytest

from monai_ext.utils import check_file


def test_check_file_returns_an_existing_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    assert check_file(str(path), "weights") == path


def test_check_file_says_what_is_missing_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pt not found \(trained weights: run configs/train.json"):
        check_file(tmp_path / "model.pt", "trained weights: run configs/train.json first")
    with pytest.raises(FileNotFoundError):
        check_file(tmp_path, "a folder is not a file")
