"""agentloop features stage."""
