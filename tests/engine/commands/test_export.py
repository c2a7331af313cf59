"""Exports (``engine.commands.export``): safetensors round trip and refusals, ONNX against onnxruntime, torch.export.

Oracles: the ``.pth`` model's own predictions; onnxruntime running the ONNX file; the eager wrapper.
"""
import json

import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_run_dir):
    from engine.api import load_model

    return load_model(tiny_run_dir / "best_model.pth", weights="ema", device="cpu")


def images():
    generator = np.random.default_rng(5)
    return [generator.integers(0, 256, shape, dtype=np.uint8) for shape in ((45, 71, 3), (64, 40, 3))]


def export_to(model, path, export_format, half=False):
    from engine.commands.export import export_model

    return export_model(model, path, export_format, half)


def test_safetensors_round_trip_matches_the_checkpoint(model, tiny_run_dir, tmp_path):
    from engine.api import load_model

    full, half = export_to(model, tmp_path / "m.safetensors", "safetensors"), tmp_path / "h.safetensors"
    export_to(model, half, "safetensors", half=True)
    assert full.stat().st_size < (tiny_run_dir / "best_model.pth").stat().st_size / 3
    assert half.stat().st_size < 0.6 * full.stat().st_size
    exported, halved = load_model(full, device="cpu"), load_model(half, device="cpu")
    assert exported.weights == "ema" and exported.img_size == model.img_size
    assert exported.model_config == model.model_config
    for image in images():
        assert np.abs(exported.predict(image) - model.predict(image)).max() <= 1e-6
        assert np.abs(halved.predict(image) - model.predict(image)).max() <= 2e-3
    with pytest.raises(CheckpointError, match="holds the ema weights only"):
        load_model(full, weights="base", device="cpu")


def rewrite(source, target, edit=None, metadata=True):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as handle:
        stored = dict(handle.metadata())
    if edit:
        edit(stored)
    save_file(load_file(str(source)), str(target), metadata=stored if metadata else None)
    return target


def test_missing_or_mismatched_metadata_is_refused_in_one_line(model, tmp_path):
    from engine.api import load_model

    source = export_to(model, tmp_path / "m.safetensors", "safetensors")

    def other_signature(stored):
        signature = json.loads(stored["model_signature"])
        stored["model_signature"] = json.dumps(dict(signature, num_experts=5))

    def other_model(stored):  # consistent metadata, but describes a model the weights do not fit
        config, signature = json.loads(stored["model_config"]), json.loads(stored["model_signature"])
        stored["model_config"] = json.dumps(dict(config, num_experts=5))
        stored["model_signature"] = json.dumps(dict(signature, num_experts=5))

    cases = [(rewrite(source, tmp_path / "bare.safetensors", metadata=False), "lacks the metadata"),
             (rewrite(source, tmp_path / "sig.safetensors", other_signature), "disagree on num_experts"),
             (rewrite(source, tmp_path / "fit.safetensors", other_model), "do not fit the model"),
             (tmp_path / "none.safetensors", "not found")]
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases.append((tmp_path / "junk.safetensors", "not a readable safetensors file"))
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as caught:
            load_model(path, device="cpu")
        assert "\n" not in str(caught.value)


def test_torch_export_has_dynamic_batch_height_and_width(model):
    from engine.commands.export import export_program

    wrapper = model.logits_module()
    program = export_program(wrapper).module()
    for shape in ((1, 3, 48, 48), (3, 3, 100, 37)):
        batch = torch.rand(*shape)
        with torch.no_grad():
            expected = wrapper(batch)
        assert program(batch).shape == (shape[0], 1, *shape[2:])
        assert torch.allclose(program(batch), expected, atol=1e-5)


def test_onnx_matches_pytorch_under_onnxruntime(model, tmp_path):
    import onnxruntime  # requirements-dev.txt installs it and onnxscript (torch's ONNX exporter needs it)
    path = export_to(model, tmp_path / "m.onnx", "onnx")
    from engine.commands.export import is_export

    assert is_export(path)  # so export --overwrite may replace it
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["images"]
    wrapper = model.logits_module()
    worst = 0.0
    for shape in ((1, 3, 48, 48), (2, 3, 91, 60)):
        batch = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.no_grad():
            expected = wrapper(batch).numpy()
        (logits,) = session.run(["logits"], {"images": batch.numpy()})
        assert logits.shape == expected.shape
        worst = max(worst, float(np.abs(logits - expected).max()))
    print(f"onnxruntime vs torch max abs difference: {worst:.2e}")
    assert worst <= 1e-4


def test_onnx_refuses_a_model_with_the_frequency_expert_in_one_line(tmp_path):
    """torch's ONNX exporter cannot convert the frequency expert's complex FFT filter: every model
    with 4+ experts (the default 7, the demo's 4) failed after ~15 s with a traceback."""
    from engine.commands.export import LogitsOnly, save_onnx
    from engine.config import ConfigError
    from models import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="test_convnext", pretrained=False, num_experts=4, decoder_channels=16))
    with pytest.raises(ConfigError, match="frequency expert"):
        save_onnx(LogitsOnly(model, 48, ((0.5,) * 3, (0.5,) * 3)), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
