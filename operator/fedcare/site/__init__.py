"""The site agent: heartbeat, GPU inventory and assignment answers for one hospital."""
