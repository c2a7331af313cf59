"""benchmarks/gpu_check.py: each measuring function on the CPU at tiny size, and main()'s one line without a GPU."""
import json
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from engine.config import build_config
from engine.runtime.compile import compile_unsupported_reason

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
TINY = dict(backbone="test_convnext", pretrained=False, num_experts=3, top_k=2, decoder_channels=16, img_size=64,
            synthetic_train_size=8, synthetic_val_size=4, batch_size=4, epochs=2, stage1_epochs=1, num_workers=0,
            progress="off")
STAGE_KEYS = {"images_per_s", "first_step_s", "later_step_s", "timed_steps", "peak_memory_mb"}


def test_environment_names_the_build_and_the_amp_choices():
    environment = gpu_check.environment(CPU, "fp16")
    assert environment["amp_auto"] == "float32"  # --amp auto trains in full precision on the CPU
    assert environment["amp_used"] == "float16" and environment["amp_requested"] == "fp16"
    assert environment["device"] == "cpu" and environment["capability"] is None and environment["cudnn"] is None
    assert isinstance(environment["arch_list"], list) and environment["torch"] == torch.__version__
    json.dumps(environment)


def test_documented_settings_are_the_seed_recipes_model_on_synthetic_scenes(tmp_path):
    settings = gpu_check.documented_settings(scenes=32, val_scenes=8)
    config = build_config({}, dict(settings, checkpoint_dir=str(tmp_path)))
    assert (config.backbone, config.num_experts, config.img_size, config.batch_size) == ("edgenext_base", 7, 384, 8)
    assert config.dataset_path is None and not config.pretrained and not config.progressive_unfreeze
    assert (config.epochs, config.stage1_epochs, config.synthetic_train_size) == (2, 1, 32)


@pytest.mark.parametrize("settings", [TINY, gpu_check.documented_settings(64, 16)], ids=["tiny", "documented"])
def test_cli_flags_mean_the_same_settings(settings):
    """The DDP runs pass settings to the real CLI as flags: they must parse back to the same config."""
    import train_ultimate

    args = train_ultimate.build_parser().parse_args(["train", *gpu_check.cli_flags(settings)])
    assert build_config({}, train_ultimate.flag_values(args)) == build_config({}, settings)


def test_stage_summary_times_from_the_first_step_on():
    epoch = gpu_check.EpochMarks(stage=2, times=[10.0, 11.0, 12.0, 14.0], images=[0, 4, 8, 12], peak_bytes=3 * 2**20)
    summary = gpu_check.stage_summary([epoch])
    assert summary == {"images_per_s": round(8 / 3, 2), "first_step_s": 1.0, "later_step_s": 1.5, "timed_steps": 2,
                       "peak_memory_mb": 3}


def test_check_runs_fp32_and_amp_reporting_rates_skips_and_autocast_validation(tmp_path):
    """``check`` (main's body on a GPU) with its training part on the CPU; fp16 there: autocast + GradScaler."""
    output = tmp_path / "gpu_check.json"
    args = gpu_check.parse_args(["--amp", "fp16", "--compile-steps", "0", "--output", str(output)])
    result = gpu_check.check(CPU, TINY, args)
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))  # written after each part
    assert result["gpu"] is False and result["environment"]["amp_used"] == "float16" and result["settings"] == TINY
    assert result["compile"] == {"skipped": "--compile-steps 0"} and "skipped" in result["ddp"]
    runs = result["training"]
    assert set(runs) == set(gpu_check.VARIANTS)
    for run in runs.values():
        assert set(run["stages"]) == {"stage1", "stage2"} and set(run["vs_fp32"]) == {"stage1", "stage2"}
        for stage in run["stages"].values():
            assert set(stage) == STAGE_KEYS and stage["timed_steps"] == 1 and stage["images_per_s"] > 0
            assert stage["peak_memory_mb"] is None  # no CUDA memory statistics on the CPU
        assert isinstance(run["skipped_steps"], int) and run["seconds"] > 0
        assert set(run["estimated_peak_mib"]) == {"stage1", "stage2"}  # --dry-run's estimate beside the peaks
        assert 0 < run["estimated_peak_mib"]["stage1"] <= run["estimated_peak_mib"]["stage2"]
    fp32, amp, channels_last = runs["fp32"], runs["amp"], runs["amp_channels_last"]
    assert fp32["precision"] == "float32" and fp32["loss_scale"] is None and "validation" not in fp32
    assert fp32["vs_fp32"]["stage2"] == {"images_per_s": 1.0, "peak_memory_mb": None}
    assert amp["precision"] == channels_last["precision"] == "float16" and channels_last["channels_last"]
    assert isinstance(amp["loss_scale"], float)
    validation = amp["validation"]
    for key in ("iou", "mae"):
        difference = validation["with_autocast"][key] - validation["without_autocast"][key]
        assert validation["difference"][key] == pytest.approx(difference, abs=2e-5)
    # The verdict from the tolerances (IoU within 0.01, MAE within 0.005). fp16 autocast validates
    # the same weights as fp32 to about 1e-4 here (a 1-step model), well inside them: True.
    assert validation["tolerance"] == {"iou": 0.01, "mae": 0.005}
    assert abs(validation["difference"]["iou"]) <= 0.01 and abs(validation["difference"]["mae"]) <= 0.005
    assert validation["within_tolerance"] is True


@pytest.mark.slow
@pytest.mark.skipif(compile_unsupported_reason() is not None, reason="torch without set_stance")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_compile_run_times_the_first_step_against_the_later_ones(tmp_path):
    # Dynamo's "eager" backend: the real capture (graphs, guards) without Inductor's minutes per graph here
    result = gpu_check.measure_compile(CPU, TINY, tmp_path, amp="off", steps=3, backend="eager")
    assert result["backend"] == "eager" and result["steps"] == 3 and result["precision"] == "float32"
    assert result["first_step_s"] > 0 and result["later_step_s"] > 0 and result["first_vs_later"] > 0
    assert result["peak_memory_mb"] is None
    json.dumps(result)


@pytest.mark.slow
def test_ddp_runs_of_the_cli_end_equal_and_a_failing_rank_ends_the_job(tmp_path):
    result = gpu_check.measure_ddp(CPU, dict(TINY, batch_size=2), tmp_path, timeout_s=240)
    assert result["backend"] == "gloo"
    equal = result["equal_weights"]
    assert equal["exit_code"] == 0 and equal["ranks_equal"] is True and equal["max_abs_difference"] == 0.0
    failure = result["rank0_failure"]
    assert failure["exit_code"] != 0 and not failure["timed_out"]
    assert failure["seconds_after_failure"] >= 0 and isinstance(failure["rank_exit_codes"], dict)
    json.dumps(result)


def test_without_a_gpu_main_prints_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and output.read_text() == lines[0] + "\n"
    assert json.loads(lines[0]) == {"benchmark": "gpu_check", "gpu": False, "skipped": "no CUDA GPU: nothing measured"}
