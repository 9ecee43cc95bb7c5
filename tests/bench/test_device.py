import pytest
import torch

from monai_ext.bench.device import resolve_device


def test_cpu_as_is_and_other_device_types_refused():
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="measures on 'cpu' or 'cuda"):
        resolve_device("mps")


def test_cuda_falls_back_to_the_cpu_with_a_message_when_absent(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cuda") == "cpu"
    assert resolve_device("cuda:1") == "cpu"
    out = capsys.readouterr().out
    assert "CUDA is not available" in out and "measuring on the CPU instead of cuda:1" in out


def test_cuda_kept_when_present_and_a_missing_index_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="cuda:1 asked for, but this machine has 1 CUDA device"):
        resolve_device("cuda:1")
