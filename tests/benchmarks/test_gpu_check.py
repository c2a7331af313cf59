"""benchmarks/gpu_check.py: each measuring function on the CPU at tiny size (training, memory side by side,
fp32 vs AMP quality, the data loader on JPEGs), and main()'s one line without a GPU."""
import json
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_check_loader, gpu_check_tables
from engine.commands.memory_estimate import GIB, StageMemory
from engine.config import build_config
from engine.runtime.compile import compile_unsupported_reason
from tests.resources import REAL_CAMO_MISSING, REAL_CAMO_TRAIN, real_camo_present

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
TINY = dict(backbone="test_convnext", pretrained=False, num_experts=3, top_k=2, decoder_channels=16, img_size=64,
            synthetic_train_size=8, synthetic_val_size=4, batch_size=4, epochs=2, stage1_epochs=1, num_workers=0,
            progress="off")
STAGE_KEYS = {"images_per_s", "first_step_s", "later_step_s", "timed_steps", "peak_memory_mb", "peak_reserved_mb",
              "outside_allocator_mb"}


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
    epoch = gpu_check.EpochMarks(stage=2, times=[10.0, 11.0, 12.0, 14.0], images=[0, 4, 8, 12], peak_bytes=3 * 2**20,
                                 peak_reserved_bytes=5 * 2**20, outside_allocator_bytes=400 * 2**20)
    later = gpu_check.EpochMarks(stage=2, times=[20.0, 21.0, 22.0], images=[0, 4, 8], peak_bytes=4 * 2**20,
                                 peak_reserved_bytes=4 * 2**20, outside_allocator_bytes=410 * 2**20)
    summary = gpu_check.stage_summary([epoch, later])
    assert summary == {"images_per_s": round(12 / 4, 2), "first_step_s": 1.0, "later_step_s": 1.0, "timed_steps": 3,
                       "peak_memory_mb": 4, "peak_reserved_mb": 5, "outside_allocator_mb": 410}  # peaks: the larger


def test_check_runs_fp32_and_amp_reporting_rates_skips_and_autocast_validation(tmp_path, monkeypatch):
    """``check`` (main's body on a GPU) with its training and loader parts on the CPU; fp16 there:
    autocast + GradScaler. The loader reads 4 synthetic JPEGs written at 96 px (768 on a GPU)."""
    monkeypatch.setattr(gpu_check_loader, "SCENE_SIDE", 96)
    output = tmp_path / "gpu_check.json"
    args = gpu_check.parse_args(["--amp", "fp16", "--compile-steps", "0", "--loader-images", "4",
                                 "--output", str(output)])
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
        memory = run["memory"]  # --dry-run's estimate beside the peaks (none measured on the CPU)
        assert set(memory) == {"stage1", "stage2"}
        assert 0 < memory["stage1"]["estimate_need_mib"] <= memory["stage2"]["estimate_need_mib"]
        for stage in memory.values():
            assert stage["estimate_allocated_mib"] > 0 and stage["estimate_fits_t4"] is True
            assert stage["max_memory_allocated_mib"] is stage["max_memory_reserved_mib"] is None
            assert stage["outside_allocator_mib"] is None and stage["fits_16gb_t4"] is None
            assert stage["t4_capacity_mib"] == 15102 and stage["cuda_context_allowance_mib"] == 512
        assert [(record["epoch"], record["stage"]) for record in run["epochs"]] == [(1, 1), (2, 2)]
        assert all(set(record) == {"epoch", "stage", "train_loss", "val_loss", "val_iou"} for record in run["epochs"])
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
    # the last epoch's loss and IoU of each run beside fp32's
    quality = result["quality"]
    for name in gpu_check.VARIANTS:
        assert quality[name] == {key: runs[name]["epochs"][-1][key] for key in ("train_loss", "val_loss", "val_iou")}
    for name in ("amp", "amp_channels_last"):
        assert quality["minus_fp32"][name] == pytest.approx(
            {key: quality[name][key] - quality["fp32"][key] for key in quality["fp32"]}, abs=2e-5)
    # the real loader on JPEGs on disk, with and without --cache disk, against the AMP run's images/s
    loader = result["loader"]
    assert loader["per_rank_needed"] == {stage: amp["stages"][stage]["images_per_s"] for stage in ("stage1", "stage2")}
    assert set(loader["cache"]) == {"none", "disk"}
    for mode, rates in loader["cache"].items():
        assert rates["images_per_s"] > 0 and rates["workers"] == 0 and rates["samples_per_epoch"] >= 256
        assert rates["training_files"] == 3  # of 4 JPEGs: 1 held out for validation
        assert loader["keeps_up"][mode] == {stage: rates["images_per_s"] >= needed
                                            for stage, needed in loader["per_rank_needed"].items()}


def test_the_loader_part_reads_the_jpegs_through_the_real_disk_cache(tmp_path):
    training = {"stages": {"stage1": {"images_per_s": 1e-3}, "stage2": {"images_per_s": 1e9}}}
    result = gpu_check_loader.measure_loader(CPU, TINY, tmp_path, training, images=5, samples_per_epoch=32, side=80)
    assert result["jpegs"] == "synthetic, 80 px, JPEG quality 95" and result["img_size"] == 64
    assert len(list((tmp_path / "jpegs" / "Train" / "Image").glob("*.jpg"))) == 5
    cached = list((tmp_path / "run-disk" / "resize-cache").rglob("*.rc"))
    assert len(cached) == result["cache"]["disk"]["training_files"] == 4  # each training JPEG resized once
    assert not (tmp_path / "run-none" / "resize-cache").exists()
    assert result["keeps_up"] == {mode: {"stage1": True, "stage2": False} for mode in ("none", "disk")}
    json.dumps(result)


@pytest.mark.skipif(not real_camo_present(), reason=REAL_CAMO_MISSING)
def test_the_loader_part_reads_real_photographs_when_given_a_dataset(tmp_path):
    result = gpu_check_loader.measure_loader(CPU, TINY, tmp_path, None, images=6, dataset_path=REAL_CAMO_TRAIN,
                                             samples_per_epoch=12)
    assert result["jpegs"] == str(REAL_CAMO_TRAIN) and result["per_rank_needed"] == {} and result["keeps_up"] == {
        "none": {}, "disk": {}}
    assert all(rates["training_files"] == 6 and rates["images_per_s"] > 0 for rates in result["cache"].values())


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


def test_a_setting_fits_a_t4_when_its_reserved_peak_and_the_cuda_context_fit_14_75_gib():
    """The verdict on measured figures: max_memory_reserved + the CUDA context allowance (512 MiB)
    within a T4's 15102 MiB; the estimate's own verdict and figures beside it."""
    estimate = StageMemory(stage=2, batch_size=8, activations=2 * GIB, weights=GIB // 8, gradients=GIB // 8,
                           optimizer=GIB // 4, ema=0)
    measured = {"stage2": {"peak_memory_mb": 9000, "peak_reserved_mb": 15102 - 512, "outside_allocator_mb": 530}}
    row = gpu_check_tables.memory_side_by_side([estimate], measured)["stage2"]
    assert row["fits_16gb_t4"] is True and row["estimate_fits_t4"] is True
    assert row["estimate_need_mib"] == round(estimate.total / 2**20)
    assert row["estimate_allocated_mib"] == round(estimate.allocated / 2**20)
    assert (row["max_memory_allocated_mib"], row["max_memory_reserved_mib"], row["outside_allocator_mib"]) == (
        9000, 15102 - 512, 530)
    measured["stage2"]["peak_reserved_mb"] += 1
    assert gpu_check_tables.memory_side_by_side([estimate], measured)["stage2"]["fits_16gb_t4"] is False
