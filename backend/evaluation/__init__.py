"""Evaluation of flamediff checkpoints (issue #7): ``flamediff eval``.

- :mod:`backend.evaluation.metrics`: PSNR, SSIM, L1 over a head mask; LPIPS-style and CSIM
  hooks for user-supplied network files; the AED/APD estimator interface and the procedural
  regressor.
- :mod:`backend.evaluation.evaluate`: self- and cross-reenactment with baselines.
- :mod:`backend.evaluation.cli`: ``register_cli(subparsers)`` adds ``eval``.
"""
