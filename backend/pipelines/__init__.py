"""Inference: reference image + animation -> frames."""
