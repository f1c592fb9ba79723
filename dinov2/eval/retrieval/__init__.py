"""The retrieval tool: encode a labelled split with a checkpoint, score it, or answer one query image.

- ``tool``: the command line (``python -m dinov2.eval.retrieval``), evaluation and query runs;
- ``outputs``: what the tool writes besides the metrics (codes file, FAISS index, plots, cached codes).
"""
