"""Training integration: HF callback, plain-PyTorch controller and their shared components.

Nothing here is imported by ``import gradience`` except ``config`` (torch-free); the other
submodules import torch, except ``detect`` (the guard's trigger rules, torch-free, replayable
offline). Who owns what:

* ``config`` — :class:`GradienceConfig` / :class:`GuardConfig` / :class:`SpectralConfig`, every
  setting with its help; the flat keywords are shorthand for it.
* ``supervisor`` — :class:`RunSupervisor`: every rule of a monitored run (recorder, guard,
  spectral monitor, gradient-norm health, snapshots, end of run), driven through the moments
  any training loop has.
* ``callback`` (``GradienceCallback``, HF ``Trainer``) and ``controller``
  (``GradienceController``, plain PyTorch): thin adapters from a framework's events to those
  moments.
* Components, each usable alone: ``recorder`` (telemetry of one run), ``guard`` (detect, roll
  back, back off; its loss / gradient-norm rules in ``detect``), ``snapshots`` (the CPU snapshot ring), ``spectral`` (κ̃), ``gradnorm``
  (gradient-norm health), ``config_snapshot`` (ConfigSnapshot from a live setup),
  ``faults`` (fault injection for tests and benchmarks), ``demo``/``demo_data``.
"""
