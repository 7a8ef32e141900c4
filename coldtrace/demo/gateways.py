"""The demo's warehouse gateways: real edge agents on their own brokers, with an uplink that can be cut."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from coldtrace.demo.errors import StackFailed
from coldtrace.demo.workdir import DemoPki, Workdir
from coldtrace.settings import BrokerSettings
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings

#: Simulated seconds without the cloud before a gateway raises local alerts (the agent's default is 300 s
#: of wall-clock time; the demo's clock runs faster, so its timers are scaled with it).
FALLBACK_AFTER_SIM_S = 300.0


def agent_settings(
    gateway_id: str, *, site_id: str, workdir: Workdir, pki: DemoPki, local_url: str, cloud_url: str,
    speed: float,
) -> AgentSettings:  # fmt: skip
    """One gateway's agent: its own broker as ``local``, the cloud through its uplink as ``cloud``."""
    ca = pki.pki.ca_bundle_path
    agent, gateway = pki.agents[gateway_id], pki.gateways[gateway_id]
    home = workdir.gateway_dir(gateway_id)
    return AgentSettings(
        gateway_id=gateway_id,
        site_id=site_id,
        state_dir=home / "state",
        signing_key=home / "signing.key",
        local=BrokerSettings(url=local_url, ca_file=ca, cert_file=agent.cert_path, key_file=agent.key_path),
        cloud=BrokerSettings(
            url=cloud_url, ca_file=ca, cert_file=gateway.chain_path, key_file=gateway.key_path
        ),
        metrics_port=0,
        fallback_after_s=FALLBACK_AFTER_SIM_S / speed,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
        feature_kernel="jit",  # each run has a fresh state directory: no ahead-of-time build per run
    )


async def wait_for_manifest(agents: Iterable[EdgeAgent], *, version: int, within_s: float = 30.0) -> None:
    """Wait until every agent has installed manifest ``version`` (pushed to it over MQTT).

    The agent installs manifests in its command task and exposes the version, not an event, so this
    looks every 50 ms.
    """
    pending = list(agents)
    try:
        async with asyncio.timeout(within_s):
            while pending := [a for a in pending if a.registry.version != version]:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.05)
    except TimeoutError as exc:
        names = ", ".join(a.settings.gateway_id for a in pending)
        raise StackFailed(f"manifest {version} did not reach {names} within {within_s:g} s") from exc
