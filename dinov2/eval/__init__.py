"""Retrieval evaluation: the Hamming-ranking metric library (``dinov2.eval.hashing``), the metric schema,
encoding, plots, and the retrieval and baselines tools.

The package imports none of them on its own, so that the tools' options load without torch; import
the metrics from ``dinov2.eval.hashing``.
"""
