"""The shipped demo checkpoint: small, loads by default, and clearly beats copying the reference
on identities no training run ever saw (a procedural dataset drawn with a seed that no training
config uses), with colours that follow the reference."""

from __future__ import annotations

import json
import os

import pytest

from flamediff.evaluation.evaluate import default_checkpoint, evaluate

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backend", "checkpoints", "demo")
FRESH_SEED = 90_210        # training configs use seed 0; docs/RESULTS.md uses 20_261_130
IDENTITIES, FRAMES = 8, 4  # 32 self-reenacted frames, about 25 s: +5.63 dB with this seed, +5.66 dB with seed 4711
PSNR_GAIN = 3.5            # dB over "copy the reference" (docs/RESULTS.md: the 16-identity figure)


def test_demo_checkpoint_is_shipped_small_and_found_by_default(head_asset):
    from flamediff.models import FlameDiffModel
    from flamediff.server.checkpoints import SHIPPED_DIR

    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(DEMO) for name in names)
    assert size <= 50 * 2 ** 20
    assert default_checkpoint() == DEMO and os.path.join(SHIPPED_DIR, "demo") == DEMO
    model = FlameDiffModel.from_pretrained(DEMO, asset=head_asset)
    config = model.config
    assert (config.preset, config.resolution, config.temporal_layers, config.correspondence) == ("demo", 128, True, True)
    assert config.latent_scale is not None and len(config.latent_scale) == config.latent_channels
    assert os.path.isfile(os.path.join(DEMO, "reference.png"))
    with open(os.path.join(DEMO, "config.json"), encoding="utf-8") as handle:
        extra = json.load(handle)["_extra"]
    assert extra["heldout_identities"] and extra["ema_decay"]  # trained on its split's training identities only
    with open(os.path.join(DEMO, "training", "vae-reconstruction.json"), encoding="utf-8") as handle:
        vae = json.load(handle)
    assert vae["identities"] == extra["heldout_identities"]


@pytest.fixture(scope="module")
def fresh_identities(tmp_path_factory, head_asset) -> str:
    from flamediff.data.procedural import generate_procedural_dataset

    folder = str(tmp_path_factory.mktemp("fresh") / "data")
    generate_procedural_dataset(folder, identities=IDENTITIES, views_per_identity=2, sequences_per_identity=1,
                                frames_per_sequence=4, resolution=128, seed=FRESH_SEED, heldout_fraction=0.0,
                                asset=head_asset)
    return folder


def test_demo_checkpoint_beats_copying_the_reference_on_fresh_identities(fresh_identities, head_asset):
    result = evaluate(DEMO, fresh_identities, "all", max_frames=FRAMES, flame_asset=head_asset, device="cpu")
    method, copy = result["self"]["method"], result["self"]["baselines"]["copy_reference"]
    vae = result["self"]["baselines"]["vae_reconstruction"]
    assert method["frames"] == copy["frames"] == FRAMES * IDENTITIES
    assert method["psnr"] >= copy["psnr"] + PSNR_GAIN, (method["psnr"], copy["psnr"])
    assert method["l1"] < copy["l1"] and method["ssim"] > copy["ssim"]
    # colours follow the reference: a second reference moves the output's colours its way
    sensitivity = result["reference_sensitivity"]
    assert sensitivity["background_follows"] > 0.8 and sensitivity["head_follows"] > 0.6, sensitivity
    # measured: head 5.3 vs 10.9 levels for copying (seed 4711: 6.6 vs 8.9; the VAE alone 1.5 and 1.9),
    # background 1.4 (seed 4711: 2.0)
    assert method["head_colour"] < copy["head_colour"] and method["background_colour"] < 3.0
    assert vae["psnr"] > method["psnr"] > copy["psnr"]
