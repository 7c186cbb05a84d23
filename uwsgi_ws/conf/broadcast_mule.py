"""The uwsgi_ws broadcast mule, as a file: `mule: %dbroadcast_mule.py` in broadcast.yaml.

uWSGI runs a mule file as a script in the mule process.  This form works under
`lazy-apps: true`, where uWSGI 2.0.31 segfaults a `module:callable` mule
(`mule: uwsgi_ws.mule:run`) about once a second.  It needs uwsgi_ws importable
by the instance's Python (installed, or on its `pythonpath`).
"""

from uwsgi_ws.mule import run

run()
