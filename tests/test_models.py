"""The dual-branch diffusion model on the tiny preset, and the sd15 wiring on the meta device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.models.config import LABELS
from flamediff.models.flamediff_model import CheckpointError, read_config


@pytest.fixture(scope="module")
def tiny() -> FlameDiffModel:
    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny")).eval()
    with torch.no_grad():  # a trained guider is not zero: make the control matter
        torch.nn.init.normal_(model.pose_guider.out.weight, std=0.1)
    return model


def _inputs(batch: int = 2, frames: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, 4, 16, 16, generator=g)
    features = torch.randn(batch, frames, 16, 32, 32, generator=g)
    return latents, torch.tensor([10, 600][:batch]), features


def _predict(model, reference, latents, t, features, keep, labels=None):
    model.write_reference(reference)
    labels = torch.full((latents.shape[0],), LABELS["real"]) if labels is None else labels
    with torch.no_grad():
        return model.predict(latents, t, features, labels, keep)


def test_shapes_and_reference_layers(tiny):
    latents, t, features = _inputs()
    v = _predict(tiny, torch.randn(2, 4, 16, 16), latents, t, features, torch.tensor([True, True]))
    assert v.shape == latents.shape
    assert tiny.num_reference_layers == 4  # every self-attention of the tiny U-Net is linked


def test_reference_conditions_and_unconditional_branch_ignores_it(tiny):
    latents, t, features = _inputs()
    ref_a, ref_b = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    keep = torch.tensor([True, False])
    out_a = _predict(tiny, ref_a, latents, t, features, keep)
    out_b = _predict(tiny, ref_b, latents, t, features, keep)
    assert (out_a[0] - out_b[0]).abs().max() > 1e-4       # conditional sample sees the reference
    torch.testing.assert_close(out_a[1], out_b[1])         # unconditional one does not


def test_batched_guidance_equals_separate_forwards(tiny):
    latents, t, features = _inputs(batch=1)
    reference = torch.randn(1, 4, 16, 16)
    cond = _predict(tiny, reference, latents, t, features, torch.tensor([True]))
    uncond = _predict(tiny, reference, latents, t, features, torch.tensor([False]))
    tiny.write_reference(reference)
    with torch.no_grad():
        both = tiny.predict(latents.repeat(2, 1, 1, 1, 1), t.repeat(2), features.repeat(2, 1, 1, 1, 1),
                            torch.tensor([LABELS["real"]] * 2), torch.tensor([True, False]),
                            reference_index=torch.tensor([0, 0]))
    torch.testing.assert_close(both[0], cond[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], uncond[0], atol=1e-5, rtol=1e-5)


def test_reference_is_written_once_and_reused(tiny):
    latents, t, features = _inputs()
    tiny.write_reference(torch.randn(2, 4, 16, 16))
    keep, labels = torch.tensor([True, True]), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        first = tiny.predict(latents, t, features, labels, keep)
        second = tiny.predict(latents, t, features, labels, keep)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_control_and_label_change_the_prediction(tiny):
    latents, t, features = _inputs()
    reference, keep = torch.randn(2, 4, 16, 16), torch.tensor([True, True])
    base = _predict(tiny, reference, latents, t, features, keep)
    assert (base - _predict(tiny, reference, latents, t, features * 0.0, keep)).abs().max() > 1e-4
    synthetic = _predict(tiny, reference, latents, t, features, keep, torch.full((2,), LABELS["synthetic"]))
    assert (base - synthetic).abs().max() > 1e-5


def test_untrained_guider_leaves_denoiser_unchanged():
    torch.manual_seed(1)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny")).eval()
    latents, t, features = _inputs()
    reference, keep = torch.randn(2, 4, 16, 16), torch.tensor([True, True])
    torch.testing.assert_close(_predict(model, reference, latents, t, features, keep),
                               _predict(model, reference, latents, t, torch.zeros_like(features), keep))


def test_predict_requires_a_reference():
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny"))
    latents, t, features = _inputs()
    with pytest.raises(RuntimeError, match="write_reference"):
        model.predict(latents, t, features, torch.zeros(2, dtype=torch.long), torch.tensor([True, True]))


def test_save_load_gives_identical_outputs(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["preset"] == "tiny" and config["_class_name"] == "FlameDiffModel"
    loaded = FlameDiffModel.from_pretrained(str(tmp_path / "ckpt")).eval()
    latents, t, features = _inputs()
    reference, keep = torch.randn(2, 4, 16, 16), torch.tensor([True, False])
    torch.testing.assert_close(_predict(loaded, reference, latents, t, features, keep),
                               _predict(tiny, reference, latents, t, features, keep), rtol=0, atol=0)


def test_a_save_that_fails_midway_leaves_the_files_it_replaces_whole(tiny, tmp_path, monkeypatch):
    """save_pretrained renames each file into place: a failure while writing the config keeps the
    old config.json, readable, and leaves no temporary file under a checkpoint's name."""
    import flamediff.models.flamediff_model as module

    folder = tmp_path / "ckpt"
    tiny.save_pretrained(str(folder))
    before = (folder / "config.json").read_text()

    def full_disk(payload, handle, **kwargs):
        handle.write("{\"_class_name\": ")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tiny.save_pretrained(str(folder))
    assert (folder / "config.json").read_text() == before
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["config.json",
                                                                                    "model.safetensors"]


def test_checkpoint_for_another_flame_asset_is_refused(tmp_path, head_asset):
    config = FlameDiffConfig.preset_named("tiny", flame_asset={"name": "FLAME2023", "hash": "a" * 64})
    FlameDiffModel(config).save_pretrained(str(tmp_path))
    assert read_config(str(tmp_path))[0].flame_asset["hash"] == "a" * 64
    with pytest.raises(CheckpointError, match="trained for FLAME asset 'FLAME2023'.*not 'procedural-head'"):
        FlameDiffModel.from_pretrained(str(tmp_path), asset=head_asset)


def test_gaussian_field_is_saved_and_needs_its_asset(tmp_path, head_asset):
    config = FlameDiffConfig.preset_named("tiny", flame_asset=head_asset.identity())
    torch.manual_seed(3)
    model = FlameDiffModel(config)
    field = model.attach_gaussian_field(head_asset)
    with torch.no_grad():
        field.features.normal_()
    model.save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="load it with its FLAME asset"):
        FlameDiffModel.from_pretrained(str(tmp_path))
    loaded = FlameDiffModel.from_pretrained(str(tmp_path), asset=head_asset)
    torch.testing.assert_close(loaded.gaussian_field.features, field.features, rtol=0, atol=0)


def test_unknown_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="neither a folder nor a reachable hub id"):
        FlameDiffModel.from_pretrained("someone/not-a-flamediff-model")
    with pytest.raises(CheckpointError, match="has no config.json"):
        FlameDiffModel.from_pretrained(str(tmp_path))


def test_sd15_wiring_on_meta_device():
    """Paper scale without weights: both U-Nets are SD-1.5's 859.5 M parameters, the VAE 83.7 M."""
    config = FlameDiffConfig.preset_named("sd15")
    with torch.device("meta"):
        model = FlameDiffModel(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.denoiser) == count(model.reference_unet) == 859_520_964
    assert count(model.vae) == 83_653_863
    assert model.num_reference_layers == 16  # every transformer block of SD-1.5's U-Net
    assert config.latent_resolution == 64 and config.vae_factor == 8


def test_sd15_loads_stable_diffusion_layout_from_a_folder(tmp_path):
    """The real loading path (unet/ and vae/ subfolders), exercised with tiny stand-in weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tiny = FlameDiffConfig.preset_named("tiny")
    UNet2DConditionModel(**tiny.unet_kwargs()).save_pretrained(str(tmp_path / "unet"))
    AutoencoderKL(**tiny.vae_kwargs()).save_pretrained(str(tmp_path / "vae"))
    model = FlameDiffModel.from_stable_diffusion(FlameDiffConfig.preset_named("tiny", pretrained=str(tmp_path)))
    reference = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))
    torch.testing.assert_close(model.denoiser.conv_in.weight, reference.conv_in.weight)


def test_missing_stable_diffusion_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = FlameDiffConfig.preset_named("tiny", pretrained=str(tmp_path / "nothing-here"))
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        FlameDiffModel.from_stable_diffusion(config)


def test_fresh_temporal_layers_leave_predictions_unchanged_then_mix_frames():
    torch.manual_seed(2)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.pose_guider.out.weight, std=0.1)
    latents, t, features = _inputs(batch=1, frames=4)
    reference, keep = torch.randn(1, 4, 16, 16), torch.tensor([True])
    before = _predict(model, reference, latents, t, features, keep)
    model.add_temporal_layers()
    assert model.config.temporal_layers
    torch.testing.assert_close(_predict(model, reference, latents, t, features, keep), before, rtol=0, atol=0)
    with torch.no_grad():  # a trained motion module: frames now see each other
        for parameter in model.temporal.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    moved = latents.clone()
    moved[0, 3] += 1.0
    a = _predict(model, reference, latents, t, features, keep)
    b = _predict(model, reference, moved, t, features, keep)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # frame 0 reacts to a change in frame 3


def test_sd15_temporal_layers_match_animatediff_layout():
    with torch.device("meta"):
        model = FlameDiffModel(FlameDiffConfig.preset_named("sd15", temporal_layers=True))
    assert sum(p.numel() for p in model.temporal.parameters()) == 453_209_280  # AnimateDiff v2 motion adapter
    assert [len(b.motion_modules) for b in model.temporal.down_blocks] == [2, 2, 2, 2]
    assert [len(b.motion_modules) for b in model.temporal.up_blocks] == [3, 3, 3, 3]


def test_temporal_layers_start_from_a_motion_adapter_folder(tmp_path):
    """The AnimateDiff loading path (diffusers MotionAdapter), with a tiny adapter saved here."""
    from flamediff.models.temporal import build_motion_adapter

    config = FlameDiffConfig.preset_named("tiny")
    adapter = build_motion_adapter(config.unet_channels, config.layers_per_block, 2, config.norm_num_groups, 32)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.fill_(0.01)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", temporal_layers=True,
                                                        motion_adapter=str(tmp_path / "adapter")))
    assert all(torch.all(p == 0.01) for p in model.temporal.parameters())
    with pytest.raises(CheckpointError, match="could not load the motion adapter"):
        FlameDiffModel(FlameDiffConfig.preset_named("tiny", temporal_layers=True,
                                                    motion_adapter=str(tmp_path / "missing")))


def test_latent_normalisation_per_channel_or_scalar():
    """Per-channel shift/scale from the config when recorded (small VAEs), else SD's one scalar;
    decode inverts encode's normalisation exactly."""
    torch.manual_seed(0)
    plain = FlameDiffModel(FlameDiffConfig.preset_named("tiny", vae_scaling_factor=0.5))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    raw = plain.vae.encode(images).latent_dist.mean
    torch.testing.assert_close(plain.encode_images(images), raw * 0.5)
    shift, scale = (0.1, -0.2, 0.3, 0.0), (2.0, 1.0, 0.5, 4.0)
    normalised = FlameDiffModel(FlameDiffConfig.preset_named("tiny", latent_shift=shift, latent_scale=scale))
    normalised.vae.load_state_dict(plain.vae.state_dict())
    expected = (raw - torch.tensor(shift).view(1, -1, 1, 1)) / torch.tensor(scale).view(1, -1, 1, 1)
    torch.testing.assert_close(normalised.encode_images(images), expected)
    torch.testing.assert_close(normalised.decode_latents(expected), plain.vae.decode(raw).sample.clamp(-1, 1),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="latent_shift has 2 values for 4"):
        FlameDiffConfig.preset_named("tiny", latent_shift=(0.0, 0.0), latent_scale=(1.0, 1.0))
    with pytest.raises(ValueError, match="both or neither"):
        FlameDiffConfig.preset_named("tiny", latent_shift=shift)
    assert FlameDiffConfig.from_dict(normalised.config.to_dict()) == normalised.config


def test_the_pixel_convention_maps_every_byte_into_minus_one_to_one_and_back():
    """uint8 RGB, channels last <-> [-1, 1], channels first: the VAE's input and output, one place."""
    from flamediff.models.pixels import images_to_tensor, tensor_to_images

    images = np.arange(256 * 3, dtype=np.int64).reshape(2, 16, 8, 3).astype(np.uint8)
    tensor = images_to_tensor(images)
    assert tensor.shape == (2, 3, 16, 8) and tensor.dtype == torch.float32
    assert tensor.min() == -1.0 and tensor.max() == 1.0 and tensor[0, 1, 0, 0] == 1 / 127.5 - 1.0
    assert np.array_equal(np.stack(tensor_to_images(tensor)), images)
    assert images_to_tensor(images[0]).shape == (3, 16, 8)
