"""Notifications (SPEC §3b): a policy's `notify` settings, fed by the event stream.

`dispatch` decides what to say (a scheduled run started, succeeded, failed; a drill found
an archive wanting; a policy recovered; a run was missed) and hands each notice to a
worker thread. Each service is a small module behind one tiny protocol
(`base.Service`): a table from the notice to what the service expects, a fixed timeout,
and `send(url, notice)`, which raises `Undelivered`. A notice that cannot be delivered is
logged as a warning (naming the service by scheme and host, never by its URL, which may
hold a secret) and never fails or delays an operation.
"""
