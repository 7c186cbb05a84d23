"""`python -m uwsgi_ws ...`: the command line (see uwsgi_ws.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
