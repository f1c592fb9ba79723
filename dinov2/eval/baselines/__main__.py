"""``python -m dinov2.eval.baselines ...``: the classical hashing baselines tool."""

import sys

from dinov2.eval.baselines.tool import main

sys.exit(main())
