"""FLAME asset loading and the torch forward, checked against smplx.FLAME as a peer."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from flamediff.formats.flame_asset import FlameAssetError, load_flame_asset, read_pickle
from flamediff.flame.model import FlameModel

smplx = pytest.importorskip("smplx")


def _random_params(generator: torch.Generator, batch: int, num_shape: int = 300, num_expression: int = 100):
    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64)
    return randn(batch, num_shape), randn(batch, num_expression), 0.3 * randn(batch, 5, 3), 0.1 * randn(batch, 3)


def _smplx_forward(folder: str, shape, expression, pose, translation):
    reference = smplx.FLAME(model_path=folder, num_betas=shape.shape[1], num_expression_coeffs=expression.shape[1],
                            batch_size=shape.shape[0], dtype=torch.float64)
    return reference(betas=shape, expression=expression, global_orient=pose[:, 0], neck_pose=pose[:, 1],
                     jaw_pose=pose[:, 2], leye_pose=pose[:, 3], reye_pose=pose[:, 4], transl=translation)


def test_forward_matches_smplx_flame(head_folder, head_asset):
    model = FlameModel(head_asset, dtype=torch.float64)
    shape, expression, pose, translation = _random_params(torch.Generator().manual_seed(0), batch=6)
    ours = model(shape, expression, pose, translation)
    peer = _smplx_forward(head_folder, shape, expression, pose, translation)
    vertex_error = (ours.vertices - peer.vertices).abs().max().item()
    print(f"max vertex difference to smplx.FLAME: {vertex_error:.3e} m")
    assert vertex_error < 1e-6
    assert (ours.joints - peer.joints[:, :5]).abs().max().item() < 1e-6
    assert (ours.landmarks - peer.joints[:, 5:]).abs().max().item() < 1e-6


def test_short_coefficients_are_zero_padded(head_folder, head_asset):
    """DECA/EMOCA export 100 shape and 50 expression coefficients: a prefix of FLAME's."""
    model = FlameModel(head_asset, dtype=torch.float64)
    shape, expression, pose, translation = _random_params(torch.Generator().manual_seed(1), 3, 100, 50)
    ours = model(shape, expression, pose, translation)
    peer = _smplx_forward(head_folder, shape, expression, pose, translation)
    assert (ours.vertices - peer.vertices).abs().max().item() < 1e-6
    padded = model(torch.nn.functional.pad(shape, (0, 200)), torch.nn.functional.pad(expression, (0, 50)),
                   pose, translation)
    assert torch.equal(ours.vertices, padded.vertices)
    with pytest.raises(ValueError, match="shape has 301"):
        model(torch.zeros(1, 301, dtype=torch.float64))


def test_single_shape_vector_broadcasts_over_frames(head_asset):
    model = FlameModel(head_asset)
    shape = torch.randn(100)
    out = model(shape=shape, expression=torch.zeros(4, 50))
    assert out.vertices.shape == (4, head_asset.num_vertices, 3)
    assert torch.allclose(out.vertices[0], out.vertices[3])


def test_rest_pose_reproduces_template(head_asset):
    out = FlameModel(head_asset, dtype=torch.float64)()
    np.testing.assert_allclose(out.vertices[0].numpy(), head_asset.v_template, atol=1e-12)


def _fake_chumpy_pickle(path: str, model: dict) -> None:
    """Write ``model`` with chumpy ``Ch`` objects in it, the way MPI's FLAME 2020 pickle holds them,
    using a throwaway stand-in module (chumpy itself is not installed)."""
    module = types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy: the array lives in the instance dict under 'x'
        def __init__(self, x):
            self.x = x
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), module
    try:
        data = dict(model)
        data["shapedirs"] = Ch(model["shapedirs"])
        data["weights"] = Ch(model["weights"])
        with open(path, "wb") as handle:
            pickle.dump(data, handle, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_loads_chumpy_pickle_without_chumpy(head_folder, head_asset, tmp_path):
    model = read_pickle(os.path.join(head_folder, "FLAME_NEUTRAL.pkl"))
    folder = tmp_path / "flame2020"
    folder.mkdir()
    _fake_chumpy_pickle(str(folder / "generic_model.pkl"), model)
    for name in ("head_template.obj", "flame_static_embedding.pkl"):
        shutil.copy(os.path.join(head_folder, name), folder / name)
    assert "chumpy" not in sys.modules
    loaded = load_flame_asset(str(folder))
    assert loaded.content_hash == head_asset.content_hash
    np.testing.assert_array_equal(loaded.weights, head_asset.weights)


def test_loads_without_scipy_installed(head_folder):
    """Blender has no scipy: the sparse J_regressor must be rebuilt without it."""
    code = ("import sys; sys.modules['scipy'] = None\n"
            "from flamediff.formats.flame_asset import load_flame_asset\n"
            f"a = load_flame_asset({head_folder!r}); print(a.J_regressor.shape, a.content_hash)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(5, " in result.stdout


def test_npz_conversion_has_same_identity(head_folder, head_asset, tmp_path):
    model = read_pickle(os.path.join(head_folder, "FLAME_NEUTRAL.pkl"))
    np.savez(tmp_path / "flame_model.npz", **{k: v for k, v in model.items() if isinstance(v, np.ndarray)})
    for name in ("head_template.obj", "flame_static_embedding.pkl"):
        shutil.copy(os.path.join(head_folder, name), tmp_path / name)
    assert load_flame_asset(str(tmp_path)).content_hash == head_asset.content_hash


def test_refuses_unknown_classes_in_pickles(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": os.system}, protocol=2))
    with pytest.raises(FlameAssetError, match="refusing to load posix.system"):
        load_flame_asset(str(path))


@pytest.mark.parametrize("damage, message", [
    ("no_model", "holds no FLAME model file"),
    ("missing_key", "lacks the FLAME arrays \\['posedirs'\\]"),
    ("bad_shape", "'weights' has shape"),
    ("no_uv", "holds no UV layout OBJ"),
    ("bad_obj", "line 2: faces must be triangles"),
    ("no_vt", "no 'vt' texture coordinates"),
    ("truncated", "could not be read as a FLAME model"),
])
def test_malformed_assets_name_the_file_and_the_fix(head_folder, tmp_path, damage, message):
    folder = tmp_path / "asset"
    shutil.copytree(head_folder, folder)
    model_path = folder / "FLAME_NEUTRAL.pkl"
    model = read_pickle(str(model_path))
    if damage == "no_model":
        model_path.unlink()
    elif damage in ("missing_key", "bad_shape"):
        if damage == "missing_key":
            del model["posedirs"]
        else:
            model["weights"] = model["weights"][:, :3]
        model_path.write_bytes(pickle.dumps(model, protocol=2))
    elif damage == "no_uv":
        (folder / "head_template.obj").unlink()
    elif damage == "bad_obj":
        (folder / "head_template.obj").write_text("v 0 0 0\nf 1 1 1\n")
    elif damage == "no_vt":
        (folder / "head_template.obj").write_text("v 0 0 0\n")
    elif damage == "truncated":
        model_path.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(FlameAssetError, match=message) as info:
        load_flame_asset(str(folder))
    assert "flame.is.tue.mpg.de" in str(info.value)


def test_missing_folder_error(tmp_path):
    with pytest.raises(FlameAssetError, match="does not exist.*flame.is.tue.mpg.de"):
        load_flame_asset(str(tmp_path / "nowhere"))
