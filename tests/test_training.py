"""Stage-1 training: config and dataset validation, gradients, overfitting, resume, 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flamediff.cli import main
from flamediff.data.dataset import DatasetError, read_dataset
from flamediff.errors import FlamediffError
from flamediff.training.train import TrainConfig, TrainConfigError, Trainer, draw_batch, train
from tiny_data import make_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, head_asset) -> str:
    folder = str(tmp_path_factory.mktemp("tiny-dataset"))
    make_tiny_dataset(folder, head_asset, identities=2, frames_per_identity=3)
    return folder


def _config(dataset: str, out: str, **changes) -> TrainConfig:
    settings = dict(dataset=dataset, output_dir=out, steps=4, batch_size=2, checkpoint_every=2,
                    learning_rate=1e-3, reference_dropout=0.0, lr_schedule="constant", warmup_steps=0, ema_decay=None)
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


def test_train_help_lists_every_config_key(capsys):
    """``flamediff train --help`` is generated from TrainConfig's fields: every key, its default
    and its help text."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in fields(TrainConfig):
        assert key.metadata["help"], key.name
        assert f" {key.name} (" in text and " ".join(key.metadata["help"].split()) in text, key.name
    assert 'snr_gamma (default null)' in text and 'domains (default ["real", "synthetic"])' in text
    assert "dataset (required)" in text


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
    torch.testing.assert_close(first.target, again.target)
    other_rank = draw_batch(index, 5, 2, seed=1, rank=1)
    assert not torch.equal(first.target, other_rank.target) or not torch.equal(first.reference, other_rank.reference)


def test_batch_draws_are_pinned(dataset):
    """The rows, references, noise seed and reference-dropout draws of a step, in the order runs
    resumed from checkpoints of earlier versions rely on (values of the trainer as it was)."""
    batch = draw_batch(read_dataset(dataset), 7, 2, seed=3, rank=1, load_images=False)
    assert batch.rows.tolist() == [[5], [1]] and batch.reference_rows.tolist() == [4, 0]
    assert batch.noise_seed == 1082107588 and batch.target is None
    np.testing.assert_array_equal(batch.reference_draws, [0.4096555927411133, 0.8630378258737811])


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


def test_the_fused_optimiser_makes_the_per_tensor_loops_update(tmp_path, dataset):
    """``fused_optimizer`` (the default) steps AdamW in one kernel: the same weights as torch's
    per-tensor loop to float rounding, and a run checkpointed with one resumes with the other."""
    fused = _config(dataset, str(tmp_path / "fused"))
    assert fused.fused_optimizer
    train(fused, log=lambda message: None)
    trainer = Trainer(fused, log=lambda message: None)
    assert trainer.optimizer.optimizer.defaults["fused"]
    looped = _config(dataset, str(tmp_path / "looped"), fused_optimizer=False)
    train(looped, max_steps=2, log=lambda message: None)
    assert not Trainer(looped, log=lambda message: None).optimizer.optimizer.defaults["fused"]
    train(_config(dataset, str(tmp_path / "looped")), log=lambda message: None)   # resumed fused
    a, b = _weights(str(tmp_path / "fused")), _weights(str(tmp_path / "looped"))
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
               "-m", "flamediff", "train", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["_extra"]["trained_steps"] == 2
    assert saved["training_domain"] == "real"   # the dataset's source: write_dataset's default
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
    drawn = np.concatenate([draw_batch(index, s, 2, 0, 0, pool=real_only.pool).label.numpy() for s in range(8)])
    assert (drawn == 0).all()

    seen = []
    unlabelled = Trainer(_config(dataset, str(tmp_path / "nolabel"), domain_label=False), log=lambda m: None)
    predict = unlabelled.model.predict
    unlabelled.model.predict = lambda *args, **kwargs: seen.append(args[3].clone()) or predict(*args, **kwargs)
    batch = next(draw_batch(index, s, 2, 0, 0) for s in range(50) if (draw_batch(index, s, 2, 0, 0).label == 1).any())
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


def test_held_out_identities_are_never_sampled(tmp_path, head_asset):
    """splits.json's held-out identities reach neither targets nor references, in either stage."""
    folder = str(tmp_path / "data")
    make_tiny_dataset(folder, head_asset, identities=3, frames_per_identity=4, all_real=True)
    (tmp_path / "data" / "splits.json").write_text(json.dumps({"train": [0, 2], "heldout": [1]}))
    trainer = Trainer(_config(folder, str(tmp_path / "run")), log=lambda m: None)
    index = trainer.index
    assert trainer.heldout == [1] and not np.isin(index.identity[trainer.pool], [1]).any()
    held = [torch.as_tensor(index.load_frame(int(row)), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1
            for row in index.samples_of_identity(1)]
    for length in (1, 3):
        for step in range(40):
            batch = draw_batch(index, step, 2, 0, 0, length=length, pool=trainer.pool)
            # the held-out identity's frames appear neither as targets nor as references
            for frame in [*batch.target.flatten(0, 1), *batch.reference]:
                assert not any(torch.equal(frame, h) for h in held)
    (tmp_path / "data" / "splits.json").write_text("{broken")
    with pytest.raises(TrainConfigError, match="splits.json is unreadable"):
        Trainer(_config(folder, str(tmp_path / "run2")), log=lambda m: None)


def test_training_and_evaluation_read_splits_alike(tmp_path, dataset):
    """One reader of splits.json: training's held-out identities, the evaluation's splits and a
    broken file's message are the same for both."""
    from flamediff.evaluation.selection import EvaluationError, identities_in_split
    from flamediff.training.train import heldout_identities

    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    index = read_dataset(str(folder))
    assert heldout_identities(str(folder)) == []
    with pytest.raises(EvaluationError, match="has no splits.json"):
        identities_in_split(index, "heldout")
    (folder / "splits.json").write_text(json.dumps({"train": [1, 0], "heldout": [5]}))
    assert heldout_identities(str(folder)) == [5] and identities_in_split(index, "train") == [0, 1]
    (folder / "splits.json").write_text(json.dumps({"train": [0], "heldout": "1"}))
    with pytest.raises(TrainConfigError, match="splits.json is unreadable .*'heldout' lists") as training:
        heldout_identities(str(folder))
    with pytest.raises(FlamediffError) as evaluation:
        identities_in_split(index, "train")
    assert str(evaluation.value) == str(training.value)


def test_warmup_cosine_schedule_ema_and_loss_curve(tmp_path, dataset):
    """The learning rate warms up linearly then decays to 0 on a cosine; the saved model holds
    the EMA weights; the loss log and its picture are written; a resume keeps all of it."""
    config = _config(dataset, str(tmp_path / "run"), steps=8, checkpoint_every=4, log_every=1, warmup_steps=2,
                     lr_schedule="cosine", ema_decay=0.9)
    trainer = Trainer(config, log=lambda m: None)
    rates = []
    for _ in range(8):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[0] == 0.0 and rates[1] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and rates[-1] < 1e-4

    train(config, max_steps=4, log=lambda m: None)
    train(config, log=lambda m: None)
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 9))
    assert (run / "model" / "loss.png").stat().st_size > 1000
    saved = _weights(str(run))
    state = torch.load(run / "checkpoints" / "step-0000008" / "custom_checkpoint_2.pkl", weights_only=False)
    trained = [name for name, p in Trainer(config, log=lambda m: None).model.named_parameters() if p.requires_grad]
    for name, shadow in zip(trained, state["shadow_params"]):
        torch.testing.assert_close(saved[name], shadow, rtol=0, atol=0, msg=name)
    raw = torch.load(run / "checkpoints" / "step-0000008" / "custom_checkpoint_0.pkl", weights_only=False)
    assert any(not torch.equal(raw[name], saved[name]) for name in trained)  # the EMA, not the last step


def test_min_snr_weighting(tmp_path, dataset):
    trainer = Trainer(_config(dataset, str(tmp_path / "run"), snr_gamma=5.0), log=lambda m: None)
    timesteps = torch.tensor([0, 500, 999])
    weights = trainer.loss_weights(timesteps)
    snr = trainer.scheduler.alphas_cumprod[timesteps] / (1 - trainer.scheduler.alphas_cumprod[timesteps])
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert weights[0] < 0.01 and weights[2] == 0.0  # clean steps and the zero-SNR last step weigh little
    plain = Trainer(_config(dataset, str(tmp_path / "plain")), log=lambda m: None)
    assert torch.equal(plain.loss_weights(timesteps), torch.ones(3))
    with pytest.raises(TrainConfigError, match="snr_gamma"):
        _config(dataset, "x", snr_gamma=-1.0)
    with pytest.raises(TrainConfigError, match="lr_schedule"):
        _config(dataset, "x", lr_schedule="linear")


def test_vae_stage_records_latent_normalisation_and_reconstruction_report(tmp_path, head_asset):
    from flamediff.models import FlameDiffModel

    folder = str(tmp_path / "data")
    make_tiny_dataset(folder, head_asset, identities=3, frames_per_identity=3)
    (tmp_path / "data" / "splits.json").write_text(json.dumps({"train": [0, 1], "heldout": [2]}))
    train(_config(folder, str(tmp_path / "vae"), stage="vae", steps=3, ema_decay=0.9), log=lambda m: None)
    model_dir = tmp_path / "vae" / "model"
    model = FlameDiffModel.from_pretrained(str(model_dir), asset=head_asset)
    config = model.config
    assert len(config.latent_shift) == len(config.latent_scale) == config.latent_channels
    index = read_dataset(folder)
    train_rows = np.nonzero(np.isin(index.identity, [0, 1]))[0]
    images = torch.stack([torch.as_tensor(index.load_frame(int(r)), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1
                          for r in train_rows])
    latents = model.encode_images(images)   # normalised: about zero mean, unit spread per channel
    assert latents.mean((0, 2, 3)).abs().max() < 0.5
    assert ((latents.std((0, 2, 3)) - 1).abs() < 0.5).all()
    torch.testing.assert_close(model.decode_latents(latents),
                               model.vae.decode(model.vae.encode(images).latent_dist.mean).sample.clamp(-1, 1),
                               atol=1e-4, rtol=0)
    report = json.loads((model_dir / "reconstruction.json").read_text())
    assert report["identities"] == [2] and report["frames"] == 3
    for key in ("psnr", "ssim", "head_colour_error", "background_colour_error", "sharpness"):
        assert np.isfinite(report[key]), key


def test_config_paths_expand_the_environment(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("FLAMEDIFF_TEST_RUNS", str(tmp_path / "runs"))
    (tmp_path / "t.json").write_text(json.dumps({"dataset": dataset, "output_dir": "$FLAMEDIFF_TEST_RUNS/a"}))
    assert TrainConfig.from_file(str(tmp_path / "t.json")).output_dir == str(tmp_path / "runs" / "a")
    (tmp_path / "u.json").write_text(json.dumps({"dataset": dataset, "output_dir": "$FLAMEDIFF_UNSET_VARIABLE/a"}))
    with pytest.raises(TrainConfigError, match="environment variable that is not set"):
        TrainConfig.from_file(str(tmp_path / "u.json"))


def test_learning_curve_scores_every_kept_checkpoint(tmp_path, dataset):
    from flamediff.evaluation.curve import main as curve_main

    run = tmp_path / "run"
    train(_config(dataset, str(run), steps=4, checkpoint_every=2, ema_decay=0.9), log=lambda m: None)
    out = tmp_path / "curve.json"
    assert curve_main([str(run), dataset, "--out", str(out), "--max-identities", "2", "--max-frames", "1"]) == 0
    rows = json.loads(out.read_text())
    assert [row["step"] for row in rows] == [2, 4]
    assert all(np.isfinite(row["head_colour"]) for row in rows)
    assert all(np.isfinite(row["psnr"]) and row["gain"] == pytest.approx(row["psnr"] - row["copy_psnr"]) for row in rows)
    assert rows[0]["psnr"] != rows[1]["psnr"]   # different weights were loaded
    split_data = tmp_path / "split-data"   # validation identities: a held-out split only
    shutil.copytree(dataset, split_data)
    (split_data / "splits.json").write_text(json.dumps({"train": [0], "heldout": [1]}))
    held = tmp_path / "held.json"
    assert curve_main([str(run), str(split_data), "--out", str(held), "--split", "heldout", "--max-frames", "1"]) == 0
    assert [row["frames"] for row in json.loads(held.read_text())] == [rows[0]["frames"] // 2] * 2


def test_latent_cache_gives_the_same_losses_and_skips_repeated_work(tmp_path, dataset, monkeypatch):
    """Stage 1 with the frozen VAE's latents read from disk: the same loss as encoding every
    step, the frames encoded once, an edited frame encoded again, a broken entry replaced."""
    monkeypatch.setenv("FLAMEDIFF_CACHE", str(tmp_path / "cache"))  # this test's entries only
    cached = Trainer(_config(dataset, str(tmp_path / "cached")), log=lambda message: None)
    plain = Trainer(_config(dataset, str(tmp_path / "plain"), cache_latents=False), log=lambda message: None)
    assert cached.latent_cache is not None and plain.latent_cache is None
    batch = cached.draw(3)
    assert batch.target is None and plain.draw(3).target is not None  # no pixels decoded with the cache
    with torch.no_grad():
        torch.testing.assert_close(cached.loss(batch), plain.loss(plain.draw(3)), rtol=1e-5, atol=1e-7)
    entries = sorted(os.listdir(cached.latent_cache.folder))
    rows = {int(r) for r in batch.rows.reshape(-1)} | {int(r) for r in batch.reference_rows}
    assert entries == [f"{r:06d}.npy" for r in sorted(rows)]

    encoded = []
    encode = cached.model.vae.encode
    monkeypatch.setattr(cached.model.vae, "encode", lambda x: encoded.append(len(x)) or encode(x))
    with torch.no_grad():
        cached.loss(batch)
    assert encoded == []  # read back, not encoded again
    row = min(rows)
    stat = os.stat(cached.index.frame_path(row))
    os.utime(cached.index.frame_path(row), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited"
    with open(os.path.join(cached.latent_cache.folder, f"{max(rows):06d}.npy"), "wb") as handle:
        handle.write(b"truncated")  # a broken entry
    latents = cached.latent_cache.raw_latents(np.array(sorted(rows)))
    assert encoded == [2 if row != max(rows) else 1]
    with torch.no_grad():
        fresh = cached.model.vae.encode(torch.stack([cached.index.frame_tensor(r) for r in sorted(rows)]))
    torch.testing.assert_close(latents, fresh.latent_dist.mean, rtol=1e-5, atol=1e-6)
