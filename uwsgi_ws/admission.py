"""Who may connect: the one access policy every transport of an extension runs.

A WebSocket upgrade (`extension`) and a Server-Sent Events stream (`events`)
are two doors to the same broadcasts, so both go through exactly these checks,
in this order, with the same answers, counted and logged under the same
refusal reasons (`uwsgi_ws.metrics.rejected`):

1. the Origin policy (`access.OriginPolicy`): 403, reason ``origin``;
2. the ``before_connect`` hooks, in registration order, in the Flask request
   context: None/True go on; False is 403; any other value (a response, a
   redirect, ``"text", 418``) is answered as a view's return value; a raised
   ``HTTPException`` (``abort(401)``) is answered as Flask answers it (the
   app's error handlers apply); reason ``before_connect``;
3. the endpoint's ``join`` hook for each room a stream names up front (SSE
   ``?rooms=``; a WebSocket joins later, by frames, and is answered with an
   error frame): False is 403 naming the room, an ``HTTPException`` is
   answered by Flask; reason ``join``;
4. the connection limits (``max_connections_per_worker``,
   ``max_connections``): 503 with ``Retry-After``, reason ``limit``.

Steps 1-3 run in the view (`Admission.check`); step 4 takes a slot that the
connection holds until it ends (`Admission.reserve`), so the transport takes it
where it can give it back whatever happens (the WebSocket in its WSGI response,
SSE when the response iterable is closed). A stream holds a worker's thread or
greenlet as a WebSocket does, so it counts against ``max_connections_per_worker``;
the instance count adds the other workers' open WebSockets (the metrics table
does not count their streams).

Refusals are plain HTTP answers before anything is streamed or upgraded: a
client can tell a refused attempt (401, 403, a redirect, 503) from a broken one.
A browser's WebSocket cannot read that status, so the browser client asks the
same policy with the SSE route's ``?probe=1`` (`Events`): the same checks, then
204 instead of a stream.

Flask-bound (request context, response objects); the pure parts, the Origin
rules and the connection counts, are `uwsgi_ws.access`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException

from . import access, metrics

log = logging.getLogger("uwsgi_ws.admission")

#: The refusal reasons of this policy (metrics label ``reason``, log field).
ORIGIN, BEFORE_CONNECT, JOIN, LIMIT = "origin", "before_connect", "join", "limit"

#: A ``before_connect`` hook: no arguments, runs in the request context.
Hook = Callable[[], Any]
#: The ``join`` check of an event endpoint for one room (False refuses it).
JoinCheck = Callable[[str], Any]


def route() -> str:
    """The Flask rule of the current request (the `route` of metrics and logs)."""
    rule = request.url_rule
    return rule.rule if rule is not None else request.path


def refusal(exc: Union[access.Refused, Any], reason: str) -> Response:
    """The plain-text HTTP answer to a refusal (`access.Refused` or any exception
    with ``status`` and ``headers``), counted and logged under `reason`.

    Needs the request context; never raises."""
    metrics.rejected(reason, str(exc), route(), exc.status)
    return Response(str(exc) + "\n", status=exc.status, headers=exc.headers, mimetype="text/plain")


def auto_worker_limit() -> Optional[int]:
    """The default of ``max_connections_per_worker``: under gevent, the worker's cores
    (``--gevent N``) less an eighth of them (at least 2) kept for plain HTTP; no limit
    in the other models (a threaded worker queues in the listen backlog instead).

    Why: with every gevent core held by a WebSocket, uWSGI 2.0's accept loop spins
    ("async queue is full", both CPUs busy) and health checks go unanswered; past
    this limit a WebSocket gets a 503 at no cost and the cores left answer HTTP.
    The model says (`Runtime.auto_worker_limit`)."""
    from . import runtime

    return runtime.load(runtime.detect()).auto_worker_limit()


class Admission:
    """The access policy of one extension (`uwsgi_ws.WebSocket`): its Origin
    policy, its ``before_connect`` hooks and its connection limits.

    `option(name)` reads the extension's effective options (``allowed_origins``,
    ``max_connections_per_worker``, ``max_connections``, ``retry_after``) at each
    request, so a Flask config change takes effect at once. Thread-safe: hooks
    are registered at set-up; `check` and `reserve` only read them.
    """

    def __init__(self, option: Callable[[str], Any]) -> None:
        self._option = option
        self.hooks: List[Hook] = []
        self._origin_policies: Dict[Hashable, access.OriginPolicy] = {}

    def add_hook(self, hook: Hook) -> Hook:
        """Register a ``before_connect`` hook (see the module docstring for what it
        may return or raise). Returns `hook` (usable as a decorator)."""
        self.hooks.append(hook)
        return hook

    def origin_policy(self) -> access.OriginPolicy:
        """The Origin policy in force, built from the ``allowed_origins`` option.

        Raises:
            ValueError: a malformed ``allowed_origins`` entry (names it).
        """
        allowed = self._option("allowed_origins")
        key: Hashable = allowed if allowed is None or isinstance(allowed, str) else tuple(allowed)
        policy = self._origin_policies.get(key)
        if policy is None:
            policy = self._origin_policies[key] = access.OriginPolicy(allowed)
        return policy

    def check(self, rooms: Sequence[str] = (), join: Optional[JoinCheck] = None) -> Optional[Response]:
        """Steps 1-3 of the policy for the current request: Origin, ``before_connect``
        hooks, then `join(room)` for each of `rooms` (when `join` is given).

        Call in the Flask request context, before answering anything. Blocks only
        as long as the hooks do.

        Args:
            rooms: the rooms the connection names up front (SSE ``?rooms=``).
            join: the endpoint's join check; its False refuses the room with 403.

        Returns:
            None to go on; otherwise the Response the view must return instead (a
            refusal, or what a hook returned, made a response as Flask makes one of
            a view's return value).

        Raises:
            HTTPException: raised by a hook or the join check (``abort(401)``),
                counted first; let it propagate so Flask answers it.
            Exception: anything else a hook raises (Flask answers 500 and logs it).
        """
        try:
            self.origin_policy().check(request.environ)
        except access.Refused as exc:
            return refusal(exc, ORIGIN)
        for hook in self.hooks:
            try:
                result = hook()
            except HTTPException as exc:
                metrics.rejected(BEFORE_CONNECT, str(exc), route(), exc.code)
                raise
            if result is False:
                return refusal(access.Refused(403, "403 Forbidden: a before_connect hook refused this connection"),
                               BEFORE_CONNECT)
            if result is not None and result is not True:
                answer: Response = current_app.make_response(result)
                metrics.rejected(BEFORE_CONNECT, "a before_connect hook answered instead", route(), answer.status_code)
                return answer
        if join is not None:
            for room in rooms:
                try:
                    allowed = join(room)
                except HTTPException as exc:
                    metrics.rejected(JOIN, f"room {room[:80]!r}: {exc}", route(), exc.code)
                    raise
                if allowed is False:
                    return refusal(access.Refused(403, f"403 Forbidden: the join hook refused room {room[:80]!r}"),
                                   JOIN)
        return None

    def reserve(self) -> Callable[[], None]:
        """Step 4: count one more open connection of this worker, unless a limit is
        reached. Never blocks; thread- and greenlet-safe.

        Returns:
            The function that gives the slot back; call it exactly once, when the
            connection ends.

        Raises:
            access.Refused: 503 with Retry-After (``retry_after`` seconds) past
                ``max_connections_per_worker`` or ``max_connections``; answer it
                with `refusal(exc, LIMIT)`.
        """
        per_worker = self._option("max_connections_per_worker")
        if per_worker == "auto":
            per_worker = auto_worker_limit()
        count = access.worker_connections
        retry_after = self._option("retry_after")
        if not count.try_acquire(per_worker):
            raise access.limit_refusal("this worker process", per_worker, "max_connections_per_worker", retry_after)
        limit = self._option("max_connections")
        if limit is not None:
            try:
                total = access.instance_connections(count.value)
            except BaseException:
                count.release()
                raise
            if total > limit:
                count.release()
                raise access.limit_refusal("this uWSGI instance", limit, "max_connections", retry_after)
        return count.release

    def admit(self, rooms: Sequence[str] = (),
              join: Optional[JoinCheck] = None) -> Tuple[Optional[Response], Callable[[], None]]:
        """The whole policy, steps 1-4, for a transport that answers in its view (SSE).

        Returns:
            (None, release) when admitted: call `release` once when the connection
            ends; or (answer, a no-op) when refused: return `answer` from the view.

        Raises:
            HTTPException, Exception: as `check`.
        """
        answer = self.check(rooms, join)
        if answer is not None:
            return answer, _nothing
        try:
            return None, self.reserve()
        except access.Refused as exc:
            return refusal(exc, LIMIT), _nothing


def _nothing() -> None:
    """The release of a connection that took no slot."""
