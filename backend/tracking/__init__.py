"""From a photo or a video to the FLAME rig: MediaPipe face-mesh landmarks
(``landmarks.py``), their link to the asset's landmark embedding (``embedding.py``), a FLAME fit
by optimisation (``fit.py``) and the ``flamediff track`` command (``cli.py``). Backend only
(torch); MediaPipe is the optional extra ``flamediff[tracking]``."""
