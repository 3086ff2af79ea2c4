"""Evaluation of flamediff checkpoints (issue #7): ``flamediff eval``.

- :mod:`flamediff.evaluation.metrics`: PSNR, SSIM, L1 over a head mask; LPIPS-style and CSIM
  hooks for user-supplied network files; the AED/APD estimator interface and the procedural
  regressor.
- :mod:`flamediff.evaluation.evaluate`: self- and cross-reenactment with baselines.
- :mod:`flamediff.evaluation.cli`: ``register_cli(subparsers)`` adds ``eval``.
"""
