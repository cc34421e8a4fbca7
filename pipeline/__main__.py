"""`python -m pipeline ...`: see pipeline.cli."""
import logging
import sys

# quiet Beam's import-time warnings (e.g. about optional GCP libraries) unless asked
logging.basicConfig(level=logging.INFO if "--verbose" in sys.argv else logging.ERROR)

from pipeline.cli import main  # noqa: E402

sys.exit(main())
