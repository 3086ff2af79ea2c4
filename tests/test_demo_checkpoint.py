"""The shipped demo checkpoint: small, loads by default, and beats copying the reference on
identities it never saw (a reduced version of docs/RESULTS.md's main table)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from backend.evaluation.evaluate import default_checkpoint, evaluate

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backend", "checkpoints", "demo")
MAX_IDENTITIES = 6
PSNR_GAIN = 0.5  # dB over "copy the reference" on these 24 frames; on docs/RESULTS.md's 96 frames the gain
#                   is +0.4 dB: issue #7's 3 dB target is not met (see docs/RESULTS.md)


def test_demo_checkpoint_is_shipped_small_and_found_by_default(head_asset):
    from backend.models import FlameDiffModel
    from backend.server.checkpoints import SHIPPED_DIR

    size = sum(os.path.getsize(os.path.join(DEMO, name)) for name in os.listdir(DEMO))
    assert size <= 50 * 2 ** 20
    assert default_checkpoint() == DEMO and os.path.join(SHIPPED_DIR, "demo") == DEMO
    model = FlameDiffModel.from_pretrained(DEMO, asset=head_asset)
    config = model.config
    assert (config.preset, config.resolution, config.temporal_layers) == ("demo", 128, True)
    assert os.path.isfile(os.path.join(DEMO, "reference.png"))


@pytest.fixture(scope="module")
def heldout_identities(tmp_path_factory, head_asset) -> str:
    """The demo dataset's held-out identities (configs/demo/train.sh's command, only that split):
    identities the checkpoint never saw, with exactly the samples docs/RESULTS.md uses."""
    from backend.data.procedural import generate_procedural_dataset

    folder = str(tmp_path_factory.mktemp("heldout") / "data")
    generate_procedural_dataset(folder, identities=60, views_per_identity=20, sequences_per_identity=2,
                                frames_per_sequence=14, resolution=128, seed=0, asset=head_asset, only_split="heldout")
    return folder


def test_heldout_subset_has_the_whole_datasets_samples(heldout_identities):
    from backend.data.dataset import read_dataset
    from backend.data.procedural import read_splits

    index = read_dataset(heldout_identities)
    assert sorted(np.unique(index.identity)) == read_splits(heldout_identities)["heldout"]
    assert len(index) == 12 * 48


def test_demo_checkpoint_beats_copying_the_reference(heldout_identities, head_asset):
    result = evaluate(DEMO, heldout_identities, "heldout", max_frames=4, max_identities=MAX_IDENTITIES,
                      flame_asset=head_asset, device="cpu")
    method, copy = result["self"]["method"], result["self"]["baselines"]["copy_reference"]
    assert method["frames"] == copy["frames"] == 4 * MAX_IDENTITIES
    assert method["psnr"] >= copy["psnr"] + PSNR_GAIN, (method["psnr"], copy["psnr"])
    assert method["l1"] < copy["l1"] and method["ssim"] > copy["ssim"]
