"""Classical unsupervised hashing baselines on the split and metric of the training-time evaluation.

- ``methods``: LSH, PCAH, ITQ and Spectral Hashing, fitted on database features (numpy only);
- ``tool``: the command line (``python -m dinov2.eval.baselines``): pixel or frozen-backbone features, the table.
"""

from .methods import METHODS, BaselineError, HashingBaseline, fit_baseline, itq_rotation, spectral_modes

__all__ = ["METHODS", "BaselineError", "HashingBaseline", "fit_baseline", "itq_rotation", "spectral_modes"]
