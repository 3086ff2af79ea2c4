"""FLAME asset folders: read (and, for the procedural head, write) FLAME's own file formats.

An asset folder holds the model pickle (FLAME 2020 ``generic_model.pkl``, FLAME 2023 /
2023-Open pickles, or smplx's ``FLAME_NEUTRAL.pkl`` naming), or an ``.npz`` conversion of it;
the UV layout OBJ (``vt``/``ft``, like FLAME's ``head_template.obj``); and a landmark embedding
(``flame_static_embedding.pkl``, DECA's ``landmark_embedding.npy`` or FLAME 2023's
``mediapipe_landmark_embedding.npz``).

MPI's pickles may hold chumpy objects and scipy sparse matrices. They are read here with a
restricted unpickler that needs neither chumpy nor scipy (Blender has neither) and refuses any
other class, so a pickle can never run code. Pure numpy + stdlib: shared with the add-on.
"""

from __future__ import annotations

import copyreg
import hashlib
import importlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, SupportsIndex

import numpy as np

FLAME_SITE = "https://flame.is.tue.mpg.de (free registration; accept the FLAME licence)"
MODEL_FILE_NAMES = ("FLAME_NEUTRAL.pkl", "generic_model.pkl", "flame2023.pkl", "flame2023_Open.pkl",
                    "flame2023_no_jaw.pkl", "FLAME_NEUTRAL.npz", "generic_model.npz", "flame_model.npz")
UV_FILE_NAMES = ("head_template.obj", "head_template_mesh.obj", "FLAME_texture_template.obj")
LANDMARK_FILE_NAMES = ("flame_static_embedding.pkl", "landmark_embedding.npy", "mediapipe_landmark_embedding.npz")
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
NUM_SHAPE_FLAME = 300
HASH_QUANTUM = 1e-6  # content hash resolution: robust to float noise, pickle vs npz, numpy versions


class FlameAssetError(ValueError):
    """A missing or malformed FLAME asset file; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling (no chumpy, no scipy, no arbitrary classes)


class _ChumpyStandIn:
    """Takes the place of any chumpy class; keeps the pickled state so its array can be read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray | None:
        if isinstance(self.state, dict):
            for key in ("x", "r", "_x"):
                if isinstance(self.state.get(key), np.ndarray):
                    return self.state[key]
        return None


class _SparseStandIn:
    """Takes the place of scipy.sparse csc/csr/coo matrices; rebuilds them as dense arrays."""

    kind = "csc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}

    def to_array(self) -> np.ndarray:
        state = self.state
        shape = tuple(int(v) for v in state.get("_shape", state.get("shape", ())))
        dense = np.zeros(shape, dtype=np.float64)
        data = np.asarray(state["data"], dtype=np.float64)
        if "indptr" in state:
            indptr, indices = np.asarray(state["indptr"]), np.asarray(state["indices"])
            major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            rows, cols = (indices, major) if self.kind == "csc" else (major, indices)
        else:
            rows, cols = np.asarray(state["row"]), np.asarray(state["col"])
        np.add.at(dense, (rows, cols), data)
        return dense


_SPARSE_CLASSES = {kind: type(f"_Sparse_{kind}", (_SparseStandIn,), {"kind": kind}) for kind in ("csc", "csr", "coo")}


def _numpy_multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26
        return importlib.import_module("numpy.core.multiarray")


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows numpy arrays, builtins containers, and stand-ins for chumpy and scipy.sparse."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("chumpy"):
            return _ChumpyStandIn
        if module.startswith("scipy.sparse"):
            for kind, cls in _SPARSE_CLASSES.items():
                if name.startswith(kind):
                    return cls
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return copyreg._reconstructor  # type: ignore[attr-defined]  # private, named by Python 2 pickles
        if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset", "slice", "complex"):
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":
            return __import__("codecs").encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a FLAME file")


def _plain(value: Any) -> Any:
    """Replace stand-ins by numpy arrays, recursively through dicts."""
    if isinstance(value, (_ChumpyStandIn, _SparseStandIn)):
        return value.to_array()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def read_pickle(path: str) -> Any:
    """Load a (possibly Python 2, chumpy- or scipy-holding) FLAME pickle as plain numpy data."""
    with open(path, "rb") as handle:
        return _plain(_RestrictedUnpickler(handle, encoding="latin1").load())


def _read_pickled_npy(path: str) -> Any:
    """Load a ``.npy`` holding a pickled object (DECA's ``landmark_embedding.npy``) safely."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(handle)
        if dtype.hasobject:
            return _plain(_RestrictedUnpickler(handle, encoding="latin1").load())
    return np.load(path, allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Writing FLAME-format pickles (the procedural head), with J_regressor as scipy's csc_matrix


class _ScipyCSCMatrix:
    """Pickles as ``scipy.sparse.csc_matrix`` without scipy installed (FLAME's J_regressor type)."""

    def __init__(self, dense: np.ndarray) -> None:
        columns = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
        self.state = {
            "_shape": tuple(int(v) for v in dense.shape),
            "maxprint": 50,
            "indptr": np.concatenate([[0], np.cumsum([len(c) for c in columns])]).astype(np.int32),
            "indices": np.concatenate(columns).astype(np.int32),
            "data": np.concatenate([dense[c, j] for j, c in enumerate(columns)]).astype(np.float64),
        }

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return copyreg.__newobj__, (type(self),), self.state  # type: ignore[attr-defined]  # what protocol 2 writes


class _FlamePickler(pickle._Pickler):  # the pure-Python pickler lets us name scipy's class
    # write / memoize / save_global are the pure-Python pickler's internals (typeshed omits them)
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _ScipyCSCMatrix:
            self.write(pickle.GLOBAL + b"scipy.sparse._csc\ncsc_matrix\n")  # type: ignore[attr-defined]
            self.memoize(obj)  # type: ignore[attr-defined]
            return
        super().save_global(obj, name)  # type: ignore[misc]


def write_flame_pickle(path: str, model: dict[str, Any]) -> None:
    """Write ``model`` like MPI's FLAME pickles (protocol 2, sparse ``J_regressor``)."""
    data = dict(model)
    data["J_regressor"] = _ScipyCSCMatrix(np.asarray(model["J_regressor"]))
    buffer = io.BytesIO()
    _FlamePickler(buffer, protocol=2).dump(data)
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: str, payload: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# OBJ UV layout


def read_obj_uv(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vertices [V,3], uv [U,2], faces_uv [F,3])`` from an OBJ with ``f v/vt`` faces."""
    vertices, uvs, faces_uv = [], [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if parts[0] == "v":
                    vertices.append([float(v) for v in parts[1:4]])
                elif parts[0] == "vt":
                    uvs.append([float(v) for v in parts[1:3]])
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                        raise ValueError("faces must be triangles written as 'f v/vt v/vt v/vt'")
                    faces_uv.append([int(c[1]) - 1 for c in corners])
            except ValueError as exc:
                raise FlameAssetError(f"line {line_no}: {exc}") from None
    if not uvs or not faces_uv:
        raise FlameAssetError("has no 'vt' texture coordinates or no 'f v/vt' faces; "
                              "expected FLAME's head_template.obj UV layout")
    return np.array(vertices, np.float64), np.array(uvs, np.float64), np.array(faces_uv, np.int64)


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              faces_uv: np.ndarray | None = None) -> None:
    """Write a triangle OBJ (with ``f v/vt`` when a UV layout is given)."""
    lines = [f"v {x:.7f} {y:.7f} {z:.7f}" for x, y, z in vertices]
    if uv is not None and faces_uv is not None:
        lines += [f"vt {u:.7f} {v:.7f}" for u, v in uv]
        lines += [f"f {a+1}/{ta+1} {b+1}/{tb+1} {c+1}/{tc+1}"
                  for (a, b, c), (ta, tb, tc) in zip(faces, faces_uv)]
    else:
        lines += [f"f {a+1} {b+1} {c+1}" for a, b, c in faces]
    _atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# The asset


@dataclass
class FlameAsset:
    """A FLAME model as plain float64 numpy arrays, plus its UV layout and landmark embedding."""

    name: str
    folder: str
    model_file: str
    v_template: np.ndarray          # [V, 3]
    faces: np.ndarray               # [F, 3] int64
    shapedirs: np.ndarray           # [V, 3, num_shape]
    exprdirs: np.ndarray            # [V, 3, num_expression]
    posedirs: np.ndarray            # [V, 3, 9 * (J - 1)]
    J_regressor: np.ndarray         # [J, V] dense
    weights: np.ndarray             # [V, J]
    parents: np.ndarray             # [J], -1 for the root
    uv: np.ndarray                  # [U, 2]
    faces_uv: np.ndarray            # [F, 3]
    landmark_faces: np.ndarray      # [L]
    landmark_barycentrics: np.ndarray  # [L, 3]
    metadata: dict[str, Any] = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False)

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def content_hash(self) -> str:
        """SHA-256 of the model arrays quantised to 1e-6: the same model read from a pickle or an
        npz, or generated on another machine, gets the same identity."""
        if self._hash is None:
            digest = hashlib.sha256()
            for name in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor",
                         "weights", "parents"):
                value = np.asarray(getattr(self, name))
                if value.dtype.kind == "f":
                    value = np.round(value / HASH_QUANTUM).astype(np.int64)
                value = np.ascontiguousarray(value.astype(np.int64))
                digest.update(f"{name}{value.shape}".encode())
                digest.update(value.tobytes())
            self._hash = digest.hexdigest()
        return self._hash

    def identity(self) -> dict[str, str]:
        """``{"name", "hash"}``: what animation files, rigs and checkpoints record."""
        return {"name": self.name, "hash": self.content_hash}

    def joint_shape_basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rest joints ``[J, 3]`` and their linear change with shape ``[J, 3, S]`` and expression
        ``[J, 3, E]``: joints = J0 + basis @ coefficients (the add-on places bones with these)."""
        joints = self.J_regressor @ self.v_template
        shape_basis = np.einsum("jv,vcs->jcs", self.J_regressor, self.shapedirs)
        expr_basis = np.einsum("jv,vcs->jcs", self.J_regressor, self.exprdirs)
        return joints, shape_basis, expr_basis


def _missing(path: str, what: str) -> FlameAssetError:
    return FlameAssetError(f"{path}: {what}. Download FLAME from {FLAME_SITE} and point flamediff at "
                           f"the folder, or leave the setting empty to use the procedural head "
                           f"('flamediff assets procedural-head --out DIR').")


def _find_file(folder: str, names: tuple[str, ...], suffixes: tuple[str, ...]) -> str | None:
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    candidates = sorted(f for f in os.listdir(folder) if f.endswith(suffixes))
    return os.path.join(folder, candidates[0]) if candidates else None


def _read_model(path: str) -> dict[str, Any]:
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                model = {key: data[key] for key in data.files}
        else:
            model = read_pickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, ImportError) as exc:
        raise _missing(path, f"could not be read as a FLAME model ({exc})") from None
    if not isinstance(model, dict):
        raise _missing(path, f"holds a {type(model).__name__}, expected FLAME's dict of arrays")
    absent = [key for key in REQUIRED_KEYS if key not in model or model[key] is None]
    if absent:
        raise _missing(path, f"lacks the FLAME arrays {absent} (found keys {sorted(model)})")
    return model


def _split_shapedirs(path: str, model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    dirs = np.asarray(model["shapedirs"], dtype=np.float64)
    for key in ("exprdirs", "expr_dirs", "expressiondirs"):
        if key in model:
            return dirs, np.asarray(model[key], dtype=np.float64)
    if dirs.ndim != 3 or dirs.shape[1] != 3:
        raise _missing(path, f"'shapedirs' must be [V, 3, K], got {list(dirs.shape)}")
    if dirs.shape[2] > NUM_SHAPE_FLAME:
        return dirs[:, :, :NUM_SHAPE_FLAME], dirs[:, :, NUM_SHAPE_FLAME:]
    if dirs.shape[2] == 20:  # smplx's reduced FLAME: 10 shape + 10 expression
        return dirs[:, :, :10], dirs[:, :, 10:]
    raise _missing(path, f"'shapedirs' has {dirs.shape[2]} components; expected 300 shape + expression ones")


def _check_shapes(path: str, arrays: dict[str, np.ndarray]) -> None:
    num_v, num_j = arrays["v_template"].shape[0], arrays["J_regressor"].shape[0]
    expected = {
        "v_template": (num_v, 3), "weights": (num_v, num_j), "J_regressor": (num_j, num_v),
        "posedirs": (num_v, 3, 9 * (num_j - 1)),
    }
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise _missing(path, f"'{key}' has shape {list(arrays[key].shape)}, expected {list(shape)}")
    if arrays["f"].ndim != 2 or arrays["f"].shape[1] != 3 or arrays["f"].max() >= num_v:
        raise _missing(path, f"'f' must be [F, 3] vertex indices below {num_v}")


def _read_landmarks(path: str | None, num_faces: int) -> tuple[np.ndarray, np.ndarray]:
    if path is None:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    try:
        if path.endswith(".pkl"):
            data = read_pickle(path)
        elif path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        else:
            data = _read_pickled_npy(path)
            data = data.item() if isinstance(data, np.ndarray) and data.dtype == object else data
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise _missing(path, f"could not be read as a landmark embedding ({exc})") from None
    for faces_key, bary_key in (("lmk_face_idx", "lmk_b_coords"), ("static_lmk_faces_idx", "static_lmk_bary_coords"),
                                ("full_lmk_faces_idx", "full_lmk_bary_coords")):
        if isinstance(data, dict) and faces_key in data and bary_key in data:
            faces = np.asarray(data[faces_key], np.int64).reshape(-1)
            bary = np.asarray(data[bary_key], np.float64).reshape(-1, 3)
            if len(faces) != len(bary) or (len(faces) and faces.max() >= num_faces):
                raise _missing(path, "landmark faces and barycentrics disagree with the mesh")
            return faces, bary
    raise _missing(path, "expected 'lmk_face_idx' and 'lmk_b_coords' (FLAME's landmark embedding)")


def load_flame_asset(path: str) -> FlameAsset:
    """Load a FLAME asset folder (or a model file whose folder holds the UV OBJ and landmarks)."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isfile(path):
        folder, model_file = os.path.dirname(path) or ".", path
    elif os.path.isdir(path):
        folder = path
        found = _find_file(folder, MODEL_FILE_NAMES, (".pkl", ".npz"))
        if found is None or os.path.basename(found) in LANDMARK_FILE_NAMES:
            raise _missing(folder, f"holds no FLAME model file (looked for {', '.join(MODEL_FILE_NAMES)})")
        model_file = found
    else:
        raise _missing(path, "does not exist")
    model = _read_model(model_file)
    shapedirs, exprdirs = _split_shapedirs(model_file, model)
    arrays = {key: np.asarray(model[key]) for key in REQUIRED_KEYS}
    _check_shapes(model_file, arrays)
    uv_file = _find_file(folder, UV_FILE_NAMES, (".obj",))
    if uv_file is None:
        raise _missing(folder, "holds no UV layout OBJ (FLAME's head_template.obj)")
    try:
        _, uv, faces_uv = read_obj_uv(uv_file)
    except FlameAssetError as exc:
        raise _missing(uv_file, str(exc)) from None
    if faces_uv.shape != arrays["f"].shape:
        raise _missing(uv_file, f"has {len(faces_uv)} faces but the model has {len(arrays['f'])}")
    landmark_faces, landmark_bary = _read_landmarks(_find_file(folder, LANDMARK_FILE_NAMES, ()), len(arrays["f"]))
    metadata = _read_metadata(folder)
    parents = np.asarray(arrays["kintree_table"])[0].astype(np.int64)
    parents[0] = -1
    return FlameAsset(
        name=metadata.get("name") or os.path.splitext(os.path.basename(model_file))[0],
        folder=os.path.abspath(folder), model_file=os.path.abspath(model_file),
        v_template=arrays["v_template"].astype(np.float64), faces=arrays["f"].astype(np.int64),
        shapedirs=shapedirs, exprdirs=exprdirs, posedirs=arrays["posedirs"].astype(np.float64),
        J_regressor=arrays["J_regressor"].astype(np.float64), weights=arrays["weights"].astype(np.float64),
        parents=parents, uv=uv, faces_uv=faces_uv, landmark_faces=landmark_faces,
        landmark_barycentrics=landmark_bary, metadata=metadata,
    )


def _read_metadata(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "asset.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return dict(json.load(handle))
    except (ValueError, TypeError) as exc:
        raise FlameAssetError(f"{path} is not valid JSON ({exc}); delete it or fix it") from None

