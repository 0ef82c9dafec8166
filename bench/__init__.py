"""``make bench``: what the bridge costs and how fast it tells, measured on this machine.

A program that prints figures (one JSON object on stdout), not a test. Every server runs
in a process of its own on 127.0.0.1, so that CPU and memory can be read per process:

- ``bench.upstream``: the fake Uploadcare (``bridge.fake_upstream``) on the wall clock, plus
  ``/_bench/`` routes to create conversions of a chosen length and to report when each was
  first seen finished by a poll;
- ``bench.receiver``: answers callbacks 204 at once, records when each arrived, and checks a
  sample of signatures with the ``standardwebhooks`` package;
- ``bench.reference``: the same job done by a minimal in-memory poller (no store, no
  metrics, no logs, no rate limit), our practical ceiling in Python;
- the system under test, ``python -m bridge serve``, on a SQLite file in a temporary
  directory (``--bridge-src`` measures another checkout with the same bench).

Modes: ``compare`` (default: the reference, then the bridge, on the same workload),
``scale`` (the bridge alone with many never-ending jobs and a binding rate limit) and
``frontier`` (``bench.frontier``: the poll policy on a virtual clock).
"""
