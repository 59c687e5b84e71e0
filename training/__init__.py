"""agentloop training stage."""
