"""Policies: the contract, the privileged expert, and (later) the dual-head CARIL agent."""
