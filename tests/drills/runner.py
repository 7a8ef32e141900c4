"""One drill's run: start the stack over the drill's servers, break it, settle, collect the outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import pytest

from tests.drills.checks import Outcome
from tests.drills.scenario import FleetPlan
from tests.drills.stack import Faults, Servers, Stack


class Drill:
    """Runs one stack over the drill's servers and hands back its :class:`Outcome`."""

    def __init__(self, servers: Servers, *, seed: int, name: str) -> None:
        self.servers = servers
        self.seed = seed
        self.label = f"[{name} seed={seed}]"
        self.stack: Stack | None = None

    def run(
        self, plan: FleetPlan, faults: Faults | None = None, *, relayed: Collection[str] = (),
        agent_options: Mapping[str, Mapping[str, int | float | str]] | None = None,
        restarted_agents: Collection[str] = (),
    ) -> Outcome:  # fmt: skip
        """Start the stack, run the fleet with ``faults``, settle, stop the processes; the outcome."""
        stack = self.stack = Stack(self.servers, plan, relayed=relayed, agent_options=agent_options)

        async def main() -> Outcome:
            async with stack:
                truth, snapshot = await stack.run(faults)
                holds = await asyncio.to_thread(stack.api_get, "/v1/holds", status="active")
                assert holds["next_cursor"] is None, "more than a page of holds"
                gateways = {
                    g: await asyncio.to_thread(stack.api_get, f"/v1/gateways/{g}") for g in stack.gateways
                }
                rejects = await asyncio.to_thread(stack.api_get, "/v1/rejects/summary")
            return Outcome(
                label=self.label, truth=truth, snapshot=snapshot, engine=stack.engine, vm=self.servers.vm,
                api_holds=holds["items"], api_gateways=gateways, api_rejects=rejects["by_reason"],
                exit_codes={}, restarted_agents=set(restarted_agents),
            )  # fmt: skip

        outcome = asyncio.run(main())
        outcome.exit_codes = stack.stop()
        return outcome

    def close(self, request: pytest.FixtureRequest) -> None:
        """Stop whatever still runs; attach the process logs to the report (shown when the drill failed)."""
        if self.stack is None:
            return
        self.stack.stop()
        request.node.add_report_section("teardown", "drill logs", self.stack.logs())
        if self.stack.database is not None:
            self.stack.database.engine.dispose()
