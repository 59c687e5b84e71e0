"""agentloop workflows stage."""
