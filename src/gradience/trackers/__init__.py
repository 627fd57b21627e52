"""Runs to and from the trackers people already use (TensorBoard, MLflow).

``export`` writes a telemetry run with the trackers' own clients; ``importer`` reads an HF
``trainer_state.json`` / ``output_dir`` or a TensorBoard log directory into telemetry v1. Tracker
libraries are imported only when a function needs them (``pip install 'gradience[trackers]'``).
"""
