"""``python -m reproduce.report STUDY``: a study's tables, figures and self-contained HTML report."""

import sys

from reproduce.report.stage import main

sys.exit(main())
