"""agentloop serving stage."""
