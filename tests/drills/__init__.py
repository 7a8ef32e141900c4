"""Fault drills over the full real stack (issue #7): something breaks while a simulated fleet publishes.

simulator → gateway Mosquitto (mTLS) → ``coldtrace agent run`` x 2 → cloud Mosquitto (mTLS) →
``coldtrace cloud worker`` x 2 → PostgreSQL + VictoriaMetrics, with the cloud API in between for
registration, manifests and the views an operator reads. Each drill then holds the stack to the
simulator's ground truth (:mod:`tests.drills.checks`).

- :mod:`tests.drills.scenario` - the fleet, its placement in time, the ground truth and what follows
- :mod:`tests.drills.agents` - edge agents as child processes (config, start, SIGKILL, health, metrics)
- :mod:`tests.drills.stack` - the stack, the run, settling, the control rejects, the snapshot
- :mod:`tests.drills.runner` - one drill's run, from start to :class:`~tests.drills.checks.Outcome`
- :mod:`tests.drills.checks` - the assertions every drill makes
- ``test_crashes``, ``test_outages``, ``test_gateway_faults`` - the drills

Run them with ``python -m pytest tests/drills``; ``COLDTRACE_DRILL_SEED=N`` replays a seed.
"""
