"""The signed anomaly-model packages shipped with coldtrace (data, loaded by edge_agent.scoring)."""
