"""benchmarks/field_table.py and its helpers: ``--quick`` end to end (one row saved per finished run, a
rerun skips them, the table has every configuration's mean and std), the order of the runs and the
LR kept, the SINet-V2 decoder's shapes and gradients, and the uniform-experts ablation's router."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.cod_peers import SINetV2Decoder, SINetV2Peer
from benchmarks.field_results import METRICS, ResultStore, markdown, row_key, run_config, summarise
from tests.resources import REAL_CAMO_TRAIN

ROOT = Path(__file__).resolve().parents[2]
CONFIG_NAMES = ("recipe", "moe-1-expert", "moe-uniform", "moe-no-detail", "recipe-s4-c64", "recipe-s4-c64-multiscale",
                "recipe-s8-c64", "recipe-s8-c128", "recipe-s8-c192", "smp-unet", "smp-fpn",
                "smp-upernet", "sinet-v2")
QUICK_RUN = ("recipe", "smp-unet", "sinet-v2")  # the recipe's CLI, one smp peer, the COD decoder
SCORES = ("Smeasure", "wFmeasure", "meanEm", "MAE")


def field_table(tmp_path: Path, *flags: str) -> str:
    """``field_table.py`` in its own process; CAMO photographs where present, else synthetic scenes."""
    command = [sys.executable, "benchmarks/field_table.py", "--data", str(REAL_CAMO_TRAIN),
               "--results", str(tmp_path / "rows.json"), "--work-dir", str(tmp_path / "work"), *flags]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_quick_table_saves_one_row_per_run_resumes_and_tabulates_every_configuration(tmp_path):
    only = ("--quick", "--only", ",".join(QUICK_RUN))
    # an unfinished run of the recipe (no saved row) left in its folder: the table trains the row anew
    stale = tmp_path / "work" / "runs" / "recipe-seed42-lrdefault"
    stale.mkdir(parents=True)
    (stale / "last.pth").write_bytes(b"left by an interrupted run")
    first = json.loads(field_table(tmp_path, *only).strip().splitlines()[-1])
    saved = (tmp_path / "rows.json").read_text()
    rows = json.loads(saved)["rows"]
    assert (first["ran"], first["skipped"]) == (3, 0)
    assert sorted(row["config"] for row in rows) == sorted(QUICK_RUN)
    for row in rows:
        assert row["seed"] == 42 and row["budget"] == first["budget"]
        assert 0 < row["cpu_s"] < 4 * row["wall_s"]  # the training tree's own CPU time (2-4 busy processes)
        assert all(0 <= row[part][name] <= 1 for part in ("val", "test", "val_flip", "test_flip") for name in SCORES)
    assert {row["lr"] for row in rows if row["config"] != "recipe"} == {2.5e-4}

    second = json.loads(field_table(tmp_path, *only).strip().splitlines()[-1])
    assert (second["ran"], second["skipped"]) == (0, 3)
    assert (tmp_path / "rows.json").read_text() == saved  # nothing retrained, nothing rewritten

    table = field_table(tmp_path, "--table")
    assert table.count("| configuration") == 2 and "`eval --tta flip`" in table
    header = next(line for line in table.splitlines() if line.startswith("| configuration"))
    for _, label in METRICS:
        assert f"| {label} mean | {label} std |" in header
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(CONFIG_NAMES) <= set(lines)
    for name in CONFIG_NAMES:
        assert ("not run" in lines[name]) == (name not in QUICK_RUN)
    width = len(header.split("|"))
    assert all(len(lines[name].split("|")) == width for name in CONFIG_NAMES)


def test_without_the_data_it_says_what_is_missing_in_one_json_line(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/field_table.py", "--data", str(tmp_path / "nowhere")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.count("\n") == 1, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"benchmark": "field_table", "skipped": f"{tmp_path / 'nowhere'}/Train not found"}


class Config:
    def __init__(self, name: str, swept: bool) -> None:
        self.name, self.swept = name, swept


def fake_row(config, seed, lr, val, test, budget="b"):
    scores = lambda s: {"Smeasure": s, "wFmeasure": s / 2, "meanEm": s, "MAE": 1 - s}  # noqa: E731
    return {"config": config, "seed": seed, "lr": lr, "budget": budget, "key": row_key(config, seed, lr, budget),
            "wall_s": 10.0 + seed, "cpu_s": 20.0 + seed, "val": scores(val), "test": scores(test)}


def test_each_run_is_saved_as_it_finishes_and_a_rerun_does_only_the_rest(tmp_path):
    path, peer = tmp_path / "rows.json", Config("peer", swept=True)
    val_by_lr = {1e-4: 0.5, 2e-4: 0.7, 4e-4: 0.6}  # 2e-4 is best on validation, 4e-4 on test
    calls = []

    def run(config, seed, lr):
        calls.append((seed, lr))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session ends during the third run
        return fake_row(config.name, seed, lr, val_by_lr[lr], 0.9 if lr == 4e-4 else 0.4)

    with pytest.raises(KeyboardInterrupt):
        run_config(peer, (42, 1, 2), tuple(val_by_lr), ResultStore(path), "b", run)
    assert [(row["seed"], row["lr"]) for row in ResultStore(path).rows] == [(42, 1e-4), (42, 2e-4)]

    done = run_config(peer, (42, 1, 2), tuple(val_by_lr), ResultStore(path), "b",
                      lambda config, seed, lr: fake_row(config.name, seed, lr, val_by_lr[lr], 0.4))
    assert len(done["skipped"]) == 2 and len(done["ran"]) == 3
    rows = ResultStore(path).rows
    assert [(row["seed"], row["lr"]) for row in rows][2:] == [(42, 4e-4), (1, 2e-4), (2, 2e-4)]  # kept by val

    recipe = Config("recipe", swept=False)
    done = run_config(recipe, (42, 1, 2), (), ResultStore(path), "b",
                      lambda config, seed, lr: fake_row(config.name, seed, lr, 0.5, 0.5))
    assert len(done["ran"]) == 3 and {row["lr"] for row in ResultStore(path).of("recipe", "b")} == {None}
    assert run_config(recipe, (42, 1, 2), (), ResultStore(path), "other-budget",
                      lambda config, seed, lr: fake_row(config.name, seed, lr, 0.5, 0.5, "other-budget"))["ran"]


@pytest.mark.parametrize("val_by_lr, extra, kept", [
    ({1e-4: 0.5, 2e-4: 0.6, 4e-4: 0.7, 8e-4: 0.8, 1.6e-3: 0.9}, [8e-4, 1.6e-3], 1.6e-3),  # best at the top twice
    ({1e-4: 0.5, 2e-4: 0.6, 4e-4: 0.7, 8e-4: 0.65}, [8e-4], 4e-4),  # one step up finds the top
    ({2.5e-5: 0.75, 5e-5: 0.8, 1e-4: 0.7, 2e-4: 0.6, 4e-4: 0.5}, [5e-5, 2.5e-5], 5e-5),  # at the bottom: halved
    ({1e-4: 0.5, 2e-4: 0.7, 4e-4: 0.6}, [], 2e-4),  # best inside the sweep: nothing more
])
def test_a_sweep_whose_best_lr_is_at_an_end_goes_on_past_it(tmp_path, val_by_lr, extra, kept):
    from benchmarks.field_results import MAX_EXTENSIONS

    swept = (1e-4, 2e-4, 4e-4)
    ran = []

    def run(config, seed, lr):
        ran.append((seed, lr))
        return fake_row(config.name, seed, lr, val_by_lr[lr], 0.5)

    run_config(Config("peer", swept=True), (42, 1), swept, ResultStore(tmp_path / "rows.json"), "b", run)
    assert len(extra) <= MAX_EXTENSIONS
    assert [lr for seed, lr in ran if seed == 42] == pytest.approx([*swept, *extra])
    assert [lr for seed, lr in ran if seed == 1] == pytest.approx([kept])
    single = run_config(Config("quick", swept=True), (42,), (1e-4,), ResultStore(tmp_path / "rows.json"), "b", run)
    assert len(single["ran"]) == 1  # one LR is no sweep: no end to go past


def test_the_summary_is_mean_and_sample_std_over_seeds_at_the_kept_lr():
    rows = [fake_row("peer", 42, 1e-4, 0.5, 0.9), fake_row("peer", 42, 2e-4, 0.7, 0.60),
            fake_row("peer", 1, 2e-4, 0.7, 0.70), fake_row("peer", 2, 2e-4, 0.7, 0.80)]
    summary = summarise(rows, swept=True, first_seed=42)
    assert summary["lr"] == 2e-4 and summary["seeds"] == [1, 2, 42]
    assert summary["Smeasure"] == pytest.approx((0.7, 0.1))
    assert summary["wall_s"] == pytest.approx((25.0, statistics.stdev([52.0, 11.0, 12.0])))
    assert summary["cpu_s"] == pytest.approx((35.0, statistics.stdev([62.0, 21.0, 22.0])))
    older = [{key: value for key, value in row.items() if key != "cpu_s"} for row in rows[:2]] + rows[2:]
    assert summarise(older, swept=True, first_seed=42)["cpu_s"] == pytest.approx((21.5, statistics.stdev([21.0, 22.0])))
    alone = summarise([fake_row("recipe", 42, None, 0.5, 0.5)], swept=False, first_seed=42)
    assert alone["Smeasure"] == (0.5, None)
    disturbed = [dict(rows[1], timing_disturbed="tests ran beside it", wall_s=999.0)] + rows[2:]
    assert summarise(disturbed, swept=True, first_seed=42)["wall_s"] == pytest.approx((11.5, statistics.stdev([11.0, 12.0])))
    assert summarise(disturbed, swept=True, first_seed=42)["Smeasure"] == summary["Smeasure"]
    flipped = [dict(row, test_flip=row["test"]) for row in rows[:3]]  # seed 2's row saved before flips were scored
    assert summarise(flipped + rows[3:], swept=True, first_seed=42, part="test_flip")["seeds"] == [1, 42]
    text = markdown({"peer": summary, "recipe": alone, "absent": summarise([], True, 42)}, {}, "b")
    lines = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")}
    assert [cell.strip() for cell in lines["peer"][:4]] == ["0.0002 (of 0.0001, 0.0002)", "3", "0.700", "0.100"]
    assert [cell.strip() for cell in lines["recipe"][:4]] == ["defaults", "1", "0.500", "-"]
    assert "not run" in lines["absent"][1]


def test_rows_saved_without_flip_scores_get_them_from_their_kept_runs_only(tmp_path, monkeypatch):
    from benchmarks import field_table

    store = ResultStore(tmp_path / "rows.json")
    for seed in (42, 1):
        store.add(fake_row("smp-unet", seed, 5e-4, 0.5, 0.5))
    store.add(dict(fake_row("smp-unet", 2, 5e-4, 0.5, 0.5), val_flip={"Smeasure": 0.1}, test_flip={"Smeasure": 0.2}))
    for seed in (42, 2):  # seed 1's run was not kept
        folder = field_table.run_folder(tmp_path, "smp-unet", seed, 5e-4)
        folder.mkdir(parents=True)
        (folder / "peer.pth").write_bytes(b"")
    scored = []
    monkeypatch.setattr(field_table, "run_predictor", lambda config, run_dir, size, tta: (run_dir.name, tta))
    monkeypatch.setattr(field_table.real_data, "score",
                        lambda predictor, root: scored.append(predictor) or {"Smeasure": 0.9})
    material = field_table.Material(tmp_path / "split", tmp_path / "test", tmp_path, field_table.QUICK, "b")
    assert field_table.add_flip_scores(store, material, tmp_path) == 1
    assert scored == [("smp-unet-seed42-lr0.0005", "flip")] * 2  # validation, then test
    reread = {row["seed"]: row for row in ResultStore(tmp_path / "rows.json").rows}
    assert reread[42]["test_flip"] == {"Smeasure": 0.9} and "test_flip" not in reread[1]
    assert reread[2]["test_flip"] == {"Smeasure": 0.2}  # already scored: left alone


def test_first_seed_only_runs_the_sweep_seed_and_a_later_full_run_adds_the_others():
    from benchmarks.field_table import PEER_LRS, SEEDS, parse_args, seeds_and_lrs

    assert seeds_and_lrs(parse_args([])) == (SEEDS, PEER_LRS)
    assert seeds_and_lrs(parse_args(["--first-seed-only"])) == (SEEDS[:1], PEER_LRS)
    assert seeds_and_lrs(parse_args(["--quick"]))[0] == SEEDS[:1]
    assert parse_args(["--only", "recipe-s4-c64-multiscale,smp-unet"]).configs[0].recipe_args == (
        "--train-scales", "0.75,1,1.25", "--min-feature-stride", "4", "--decoder-channels", "64")


def test_sinet_v2_decoder_gives_input_size_logits_and_every_parameter_a_gradient():
    torch.manual_seed(0)
    decoder = SINetV2Decoder([40, 112, 320], channels=32)
    features = [torch.randn(2, 40, 12, 10), torch.randn(2, 112, 6, 5), torch.randn(2, 320, 3, 3)]
    maps = decoder(features, (96, 80))
    assert [tuple(logits.shape) for logits in maps] == [(2, 1, 96, 80)] * 4
    sum(logits.square().mean() for logits in maps).backward()
    missing = [name for name, param in decoder.named_parameters()
               if param.grad is None or not torch.isfinite(param.grad).all() or not param.grad.abs().sum()]
    assert not missing


def test_sinet_v2_peer_returns_four_maps_while_training_and_the_prediction_in_eval():
    model = SINetV2Peer("tf_efficientnet_lite0")
    images = torch.randn(2, 3, 64, 48)
    assert [tuple(logits.shape) for logits in model(images)] == [(2, 1, 64, 48)] * 4
    with torch.no_grad():
        assert tuple(model.eval()(images).shape) == (2, 1, 64, 48)


def test_uniform_experts_averages_every_expert_with_a_frozen_zero_gate(monkeypatch):
    from benchmarks.uniform_experts import fix_router_gates_at_zero
    from models import ModelConfig, build_model, router

    monkeypatch.setattr(router.TopKRouter, "__init__", router.TopKRouter.__init__)  # restored after the test
    fix_router_gates_at_zero()
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", num_experts=7, top_k=7, router_noise=0.0,
                                    pretrained=False)).train()
    gate = model.decoder.router.gate
    assert not gate.weight.requires_grad and not gate.bias.requires_grad
    output = model(torch.randn(2, 3, 64, 64))
    assert torch.equal(output.routing_weights, torch.full((2, 7), 1 / 7))
    output.logits.mean().backward()
    assert gate.weight.grad is None and not gate.weight.abs().sum()


def test_a_row_named_after_a_decoder_pins_its_flags_so_a_moved_default_cannot_change_it():
    """``recipe-s4-c64``: ``--min-feature-stride 4 --decoder-channels 64`` among its flags; the saved rows
    of such a configuration keep their meaning when the defaults move (as they did to stride 8, 160)."""
    import re

    from benchmarks.field_table import CONFIGS

    named = [config for config in CONFIGS if re.search(r"-s\d+-c\d+", config.name)]
    assert len(named) >= 6
    for config in named:
        stride, channels = re.search(r"-s(\d+)-c(\d+)", config.name).groups()
        flags = dict(zip(config.recipe_args[::2], config.recipe_args[1::2]))
        assert (flags.get("--min-feature-stride"), flags.get("--decoder-channels")) == (stride, channels), config.name
