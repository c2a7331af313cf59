"""Start-up checks of a CUDA GPU, on the CPU: each card is described by patching torch.cuda's queries.

No test here has a GPU, so any real CUDA work in the checks would raise: they pass only because the
checks use nothing but the patched queries (availability, capability, arch list, name).
"""
from __future__ import annotations

import pytest
import torch

from engine.config import ConfigError
from engine.runtime.cuda_device import amp_dtype, arch_list_supports, check_cuda_device
from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import TINY_TRAIN_FLAGS

# The kernels of the CUDA 12.8 PyTorch wheels (Kaggle's default image): no Pascal (sm_60).
CU128 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
PASCAL_BUILD = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "compute_86"]
CARDS = {"Tesla P100-PCIE-16GB": (6, 0), "Tesla T4": (7, 5), "NVIDIA L4": (8, 9), "NVIDIA A100": (8, 0),
         "NVIDIA H100": (9, 0)}
CUDA = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(name, arch_list)`` makes torch.cuda describe that card (and nothing else)."""

    def describe(name: str, arch_list=CU128):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: CARDS[name])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))

    return describe


@pytest.mark.parametrize("capability, arch_list, expected", [
    ((8, 9), CU128, True),  # L4: sm_86 binaries run on 8.9 (same major, higher minor)
    ((7, 5), CU128, True),  # T4: sm_75
    ((6, 0), CU128, False),  # P100 under Kaggle's default image
    ((6, 1), ["sm_60"], True),
    ((8, 6), ["sm_90"], False),  # a binary never runs on an older GPU
    ((9, 0), ["sm_80", "sm_86"], False),  # nor on another major version
    ((12, 0), ["sm_80", "compute_90"], True),  # PTX is compiled for any newer GPU at load time
    ((8, 6), ["compute_90"], False),
    ((9, 0), ["sm_90a"], True), ((10, 0), ["sm_90a"], False),  # arch-specific: that capability only
    ((10, 3), ["sm_100f"], True),
    ((7, 5), [], False),
])
def test_cuda_compatibility_rule(capability, arch_list, expected):
    assert arch_list_supports(capability, arch_list) is expected


@pytest.mark.parametrize("card, expected", [("Tesla T4", torch.float16), ("Tesla P100-PCIE-16GB", torch.float16),
                                            ("NVIDIA A100", torch.bfloat16), ("NVIDIA L4", torch.bfloat16),
                                            ("NVIDIA H100", torch.bfloat16)])
def test_amp_auto_is_fp16_below_compute_8_and_bf16_from_it(gpu, card, expected):
    gpu(card)
    assert amp_dtype("auto", CUDA) is expected
    assert amp_dtype("fp16", CUDA) is torch.float16 and amp_dtype("off", CUDA) is None


def test_amp_on_the_cpu():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp16", cpu) is torch.float16
    assert amp_dtype("bf16", cpu) is torch.bfloat16


def test_explicit_bf16_is_refused_below_compute_8(gpu):
    gpu("Tesla T4")
    with pytest.raises(ConfigError, match="--amp fp16"):
        check_cuda_device(CUDA, amp="bf16")
    gpu("NVIDIA A100")
    check_cuda_device(CUDA, amp="bf16")


def test_a_gpu_without_kernels_in_this_build_is_refused(gpu):
    gpu("Tesla P100-PCIE-16GB")
    with pytest.raises(ConfigError, match=r"P100.*compute 6\.0.*T4 or an L4.*PyTorch build for sm_60"):
        check_cuda_device(CUDA)
    gpu("Tesla P100-PCIE-16GB", PASCAL_BUILD)
    check_cuda_device(CUDA, amp="auto")  # a Pascal-capable build runs it
    gpu("NVIDIA L4")
    check_cuda_device(CUDA, amp="auto", compile=True)


def test_compile_is_refused_below_compute_7(gpu):
    gpu("Tesla P100-PCIE-16GB", PASCAL_BUILD)
    with pytest.raises(ConfigError, match="--compile.*7.0"):
        check_cuda_device(CUDA, compile=True)
    gpu("Tesla T4")
    check_cuda_device(CUDA, amp="auto", compile=True)


@pytest.mark.parametrize("card, arch_list, extra, words", [
    ("Tesla P100-PCIE-16GB", CU128, [], ["P100", "T4", "PyTorch build"]),
    ("Tesla T4", CU128, ["--amp", "bf16"], ["--amp bf16", "--amp fp16"]),
    ("Tesla P100-PCIE-16GB", PASCAL_BUILD, ["--compile"], ["--compile", "7.0"]),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_cli_refuses_before_anything_is_written(gpu, tmp_path, card, arch_list, extra, words, dry_run):
    gpu(card, arch_list)
    folder = tmp_path / "ckpt"
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--device", "cuda", "--checkpoint-dir", folder, *extra,
                     *(["--dry-run"] if dry_run else []))
    assert_refused(result, *words)
    assert not folder.exists()


def test_eval_refuses_a_gpu_without_kernels(gpu, tiny_run_dir, tiny_test_set, tmp_path):
    gpu("Tesla P100-PCIE-16GB")
    result = run_cli("eval", "--checkpoint", tiny_run_dir / "best_model.pth", "--dataset-path", tiny_test_set,
                     "--device", "cuda", "--output", tmp_path / "scores.json")
    assert_refused(result, "P100", "T4")
    assert not (tmp_path / "scores.json").exists()
