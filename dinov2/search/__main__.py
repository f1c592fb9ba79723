"""``python -m dinov2.search {build,search,serve} ...``: the archive index command line."""

import sys

from dinov2.search.cli import main

sys.exit(main())
