"""`python -m uwsgi_ws ...`: the command line (see uwsgi_ws.cli; publish and emit: uwsgi_ws.client)."""

import sys

from .cli import main

if __name__ == "__main__":
    if sys.argv[1:2] in (["publish"], ["emit"]):
        from .client import emit_main, publish_main

        sys.exit((publish_main if sys.argv[1] == "publish" else emit_main)(sys.argv[2:]))
    if sys.argv[1:2] == ["settings"]:  # the README's table of instance settings
        from .settings import markdown_table

        print(markdown_table())  # noqa: T201  (CLI output)
        sys.exit(0)
    sys.exit(main())
