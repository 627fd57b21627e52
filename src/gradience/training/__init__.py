"""Training integration: HF callback, plain-PyTorch controller and their shared components.

Nothing here is imported by ``import gradience``; the submodules import torch.
Components (each usable alone): ``gradnorm`` (gradient-norm health), ``config_snapshot``
(ConfigSnapshot from a live setup), ``recorder`` (telemetry of one run), ``callback``
(``GradienceCallback``), ``controller`` (``GradienceController``), ``demo``/``demo_data``.
"""
