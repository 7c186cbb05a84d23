"""`python -m uwsgi_ws ...`: the command line (uwsgi_ws.cli: conf, check, settings, publish, emit)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
