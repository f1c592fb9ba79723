"""Classical unsupervised hashing baselines on the split and metric of the training-time evaluation.

- ``methods``: LSH, PCAH, ITQ and Spectral Hashing, fitted on database features (numpy only);
- ``options``: the command-line options (importable without torch);
- ``tool``: the command line (``python -m dinov2.eval.baselines``): pixel or frozen-backbone features, the table.

The package imports none of them on its own, so that the options load without torch.
"""

