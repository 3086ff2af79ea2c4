"""Evaluation of flamediff checkpoints: ``flamediff eval`` and ``flamediff results``.

- :mod:`flamediff.evaluation.metrics`: PSNR, SSIM, L1 over a head mask; LPIPS-style and CSIM
  hooks for user-supplied network files; the AED/APD estimator interface and the procedural
  regressor.
- :mod:`flamediff.evaluation.selection`: split identities, references, driving rows, ground truth.
- :mod:`flamediff.evaluation.masks`: head masks (FLAME coverage or background difference).
- :mod:`flamediff.evaluation.evaluate`: self- and cross-reenactment with baselines.
- :mod:`flamediff.evaluation.studies`: PSNR by view, artefact level, flicker.
- :mod:`flamediff.evaluation.reconstruction`: the VAE's reconstruction ceiling.
- :mod:`flamediff.evaluation.results`: docs/RESULTS.md from a plan; :mod:`.curve`: learning curves.
- :mod:`flamediff.evaluation.cli`: ``register_cli(subparsers)`` adds ``eval``.
"""

#: What a checkpoint with the reference correspondence reads of a reference frame: the dataset's
#: annotated pose and camera, the tracker's fit of the frame (as a server job tracks a photo), or
#: nothing. Here, not in evaluate.py, so the CLI's parser needs no torch.
REFERENCE_POSES = ("annotated", "tracked", "none")
