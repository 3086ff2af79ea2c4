"""Stage-1 training: config and dataset validation, gradients, overfitting, resume, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.cli import main
from backend.data.dataset import DatasetError, read_dataset
from backend.training.train import TrainConfig, TrainConfigError, Trainer, draw_batch, train
from tiny_data import make_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, head_asset) -> str:
    folder = str(tmp_path_factory.mktemp("tiny-dataset"))
    make_tiny_dataset(folder, head_asset, identities=2, frames_per_identity=3)
    return folder


def _config(dataset: str, out: str, **changes) -> TrainConfig:
    settings = dict(dataset=dataset, output_dir=out, steps=4, batch_size=2, checkpoint_every=2,
                    learning_rate=1e-3, reference_dropout=0.0)
    settings.update(changes)
    return TrainConfig.from_dict(settings)


def test_config_errors_name_the_key(tmp_path, dataset):
    with pytest.raises(TrainConfigError, match="unknown keys \\['step'\\]"):
        TrainConfig.from_dict({"dataset": dataset, "output_dir": "x", "step": 3})
    with pytest.raises(TrainConfigError, match="missing required keys \\['dataset'\\]"):
        TrainConfig.from_dict({"output_dir": "x"})
    with pytest.raises(TrainConfigError, match="'stage' must be one of"):
        _config(dataset, "x", stage="2b")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(TrainConfigError, match="not valid JSON"):
        TrainConfig.from_file(str(tmp_path / "bad.json"))
    with pytest.raises(TrainConfigError, match="larger than the dataset"):
        Trainer(_config(dataset, str(tmp_path / "run"), batch_size=64))


def test_yaml_config_paths_are_relative_to_the_file(tmp_path, dataset):
    (tmp_path / "train.yaml").write_text(f"dataset: {dataset}\noutput_dir: run\nsteps: 3\n")
    config = TrainConfig.from_file(str(tmp_path / "train.yaml"))
    assert config.output_dir == str(tmp_path / "run") and config.steps == 3


def test_dataset_validation(tmp_path, dataset):
    index = read_dataset(dataset)
    assert len(index) == 6 and index.resolution == 32 and len(index.sequences()) == 2
    with pytest.raises(DatasetError, match="no dataset.json"):
        read_dataset(str(tmp_path))
    broken = tmp_path / "broken"
    os.system(f"cp -r {dataset} {broken}")
    np.savez(broken / "samples.npz", identity=np.zeros(6, int), label=np.full(6, 3), sequence=np.zeros(6, int),
             frame_in_sequence=np.arange(6))
    with pytest.raises(DatasetError, match="'label' must be 0 \\(real\\) or 1"):
        read_dataset(str(broken))
    np.savez(broken / "samples.npz", identity=np.zeros(5, int), label=np.zeros(6, int), sequence=np.zeros(6, int),
             frame_in_sequence=np.arange(6))
    with pytest.raises(DatasetError, match="'identity' must be \\[6\\] integers"):
        read_dataset(str(broken))


def test_batches_are_reproducible_and_use_same_identity_references(dataset):
    index = read_dataset(dataset)
    first, again = draw_batch(index, 5, 2, seed=1, rank=0), draw_batch(index, 5, 2, seed=1, rank=0)
    torch.testing.assert_close(first["target"], again["target"])
    other_rank = draw_batch(index, 5, 2, seed=1, rank=1)
    assert not torch.equal(first["target"], other_rank["target"]) or not torch.equal(first["reference"], other_rank["reference"])


def test_gradients_reach_the_gaussian_features(tmp_path, dataset):
    """The features have no direct supervision: only the diffusion loss trains them. The guider's
    output layer starts at zero, so they receive gradient from the second step on."""
    trainer = Trainer(_config(dataset, str(tmp_path / "run")), log=lambda message: None)
    trainer.loss(draw_batch(trainer.index, 0, 2, 0, 0)).backward()
    assert trainer.model.gaussian_field.features.grad.abs().sum() == 0  # zero-initialised guider output
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    trainer.loss(draw_batch(trainer.index, 1, 2, 0, 0)).backward()
    field = trainer.model.gaussian_field
    for parameter in (field.features, field.opacity_logits, field.log_scales):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert trainer.model.vae.encoder.conv_in.weight.grad is None  # the VAE is frozen in stage 1


def test_tiny_model_overfits_a_handful_of_frames(tmp_path, head_asset):
    folder = str(tmp_path / "data")
    make_tiny_dataset(folder, head_asset, identities=1, frames_per_identity=3)
    torch.manual_seed(0)
    trainer = Trainer(_config(folder, str(tmp_path / "run"), steps=250, learning_rate=3e-3,
                              field_learning_rate=1e-2, checkpoint_every=1000), log=lambda message: None)

    def held_out_loss() -> float:  # fixed noise and timesteps, never drawn in training
        with torch.no_grad():
            return float(np.mean([trainer.loss(draw_batch(trainer.index, 10_000 + s, 2, 0, 0)).item()
                                  for s in range(6)]))

    before = held_out_loss()
    trainer.train()
    after = held_out_loss()
    print(f"overfit: loss {before:.4f} -> {after:.4f} ({1 - after / before:.0%} lower)")
    assert after <= 0.2 * before


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model", "model.safetensors"))


def test_resume_after_a_kill_continues_exactly(tmp_path, dataset):
    straight = _config(dataset, str(tmp_path / "straight"))
    train(straight, log=lambda message: None)
    interrupted = _config(dataset, str(tmp_path / "interrupted"))
    train(interrupted, max_steps=2, log=lambda message: None)  # "killed" after the step-2 checkpoint
    assert os.listdir(tmp_path / "interrupted" / "checkpoints") == ["step-0000002"]
    assert not (tmp_path / "interrupted" / "model").exists()
    messages: list[str] = []
    train(interrupted, log=messages.append)
    assert any("resumed from" in m and "step 2" in m for m in messages)
    a, b = _weights(str(tmp_path / "straight")), _weights(str(tmp_path / "interrupted"))
    assert a.keys() == b.keys()
    # Two uninterrupted CPU runs already differ by ~1e-7 (threaded scatter-add order in the
    # splatter's backward); a resume that lost any state would differ by orders more.
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_vae_stage_learns_to_reconstruct(tmp_path, dataset):
    config = _config(dataset, str(tmp_path / "vae"), stage="vae", steps=40, learning_rate=2e-3, checkpoint_every=100)
    trainer = Trainer(config, log=lambda message: None)
    batch = draw_batch(trainer.index, 0, 2, 0, 0)
    with torch.no_grad():
        before = trainer.loss(batch).item()
    trainer.train()
    with torch.no_grad():
        after = trainer.loss(batch).item()
    assert after < 0.5 * before
    denoiser = trainer.model.denoiser.conv_in.weight
    assert not denoiser.requires_grad  # only the VAE trains in this stage


def test_cli_train_and_two_processes(tmp_path, dataset):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"dataset": dataset, "output_dir": str(tmp_path / "run"), "steps": 2,
                                  "batch_size": 2, "checkpoint_every": 1}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # torchrun sets RANK/WORLD_SIZE; accelerate then runs multi-process on CPU with gloo
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "backend", "train", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["_extra"]["trained_steps"] == 2
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2


def test_stage_two_trains_only_the_temporal_layers(tmp_path, head_asset):
    folder = str(tmp_path / "data")
    make_tiny_dataset(folder, head_asset, identities=2, frames_per_identity=4, all_real=True)
    train(_config(folder, str(tmp_path / "stage1"), steps=2, checkpoint_every=10), log=lambda message: None)
    with pytest.raises(TrainConfigError, match="set 'init_from'"):
        _config(folder, str(tmp_path / "stage2"), stage="2")
    stage2 = _config(folder, str(tmp_path / "stage2"), stage="2", init_from=str(tmp_path / "stage1" / "model"),
                     steps=2, batch_size=2, sequence_length=3, checkpoint_every=10)
    train(stage2, log=lambda message: None)
    before, after = _weights(str(tmp_path / "stage1")), _weights(str(tmp_path / "stage2"))
    temporal = {name for name in after if name.startswith("temporal.")}
    assert temporal and set(after) - temporal == set(before)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    changed = [name for name in temporal if "proj_out" in name and after[name].abs().max() > 0]
    assert changed, "the zero-initialised temporal output projections should have learnt"
    saved = json.loads((tmp_path / "stage2" / "model" / "config.json").read_text())
    assert saved["temporal_layers"] is True


def test_stage_two_needs_long_real_sequences(tmp_path, dataset):
    train(_config(dataset, str(tmp_path / "s1"), steps=1, checkpoint_every=10), log=lambda message: None)
    config = _config(dataset, str(tmp_path / "s2"), stage="2", init_from=str(tmp_path / "s1" / "model"),
                     sequence_length=3)
    with pytest.raises(TrainConfigError, match="needs 2 real sequences of at least 3 frames"):
        train(config, log=lambda message: None)


def test_ablation_options_domains_label_and_vae_from(tmp_path, dataset):
    """`domains` restricts the drawn samples, `domain_label: false` hides the label from the
    model, `vae_from` starts a new model (here another control) from a trained VAE."""
    with pytest.raises(TrainConfigError, match="'domains' must list"):
        _config(dataset, "x", domains=["studio"])
    with pytest.raises(TrainConfigError, match="not both"):
        _config(dataset, "x", init_from="a", vae_from="b")
    real_only = Trainer(_config(dataset, str(tmp_path / "real"), domains=["real"]), log=lambda m: None)
    index = real_only.index
    np.testing.assert_array_equal(real_only.pool, np.nonzero(index.label == 0)[0])
    drawn = np.concatenate([draw_batch(index, s, 2, 0, 0, pool=real_only.pool)["label"].numpy() for s in range(8)])
    assert (drawn == 0).all()

    seen = []
    unlabelled = Trainer(_config(dataset, str(tmp_path / "nolabel"), domain_label=False), log=lambda m: None)
    predict = unlabelled.model.predict
    unlabelled.model.predict = lambda *args, **kwargs: seen.append(args[3].clone()) or predict(*args, **kwargs)
    batch = next(draw_batch(index, s, 2, 0, 0) for s in range(50) if (draw_batch(index, s, 2, 0, 0)["label"] == 1).any())
    unlabelled.loss(batch)
    assert (seen[0] == 0).all()

    vae_run = str(tmp_path / "vae")
    train(_config(dataset, vae_run, stage="vae", steps=1), log=lambda m: None)
    geometry = Trainer(_config(dataset, str(tmp_path / "geometry"), vae_from=os.path.join(vae_run, "model"),
                               overrides={"control": "geometry"}), log=lambda m: None)
    trained_vae = load_file(os.path.join(vae_run, "model", "model.safetensors"))
    for name, value in geometry.model.vae.state_dict().items():
        torch.testing.assert_close(value, trained_vae[f"vae.{name}"])
    assert geometry.model.config.control == "geometry" and geometry.model.gaussian_field is None
