"""Mesh geometry shared by inference, training data and evaluation (torch, no learning).

- :mod:`flamediff.geometry.mesh`: points on a mesh from barycentrics, face / vertex normals,
  triangle areas: the one implementation the FLAME forward, the Gaussian field, the rasteriser
  and the procedural renderer use.
- :mod:`flamediff.geometry.rotations`: axis-angle to rotation matrices (differentiable, for
  the FLAME forward).
- :mod:`flamediff.geometry.rasterizer`: the triangle rasteriser behind the procedural dataset,
  the ablation's geometry control maps and the evaluation's head masks.

View matrices stay in :func:`flamediff.formats.conventions.view_matrices` (numpy): they are the
same homogeneous assembly the add-on's camera conversions use inside Blender, where torch is not
available. The numpy rotation conversions live in :mod:`flamediff.formats.rotations` for the same
reason.
"""
