"""The retrieval tool: encode a labelled split with a checkpoint, score it, or answer one query image.

- ``options``: the command-line options and ``main`` (``python -m dinov2.eval.retrieval``), importable without torch;
- ``tool``: evaluation and query runs;
- ``outputs``: what the tool writes besides the metrics (codes file, FAISS index, plots, cached codes).
"""
