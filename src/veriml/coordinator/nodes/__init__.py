"""Nodes: registration and heartbeats, the scheduler, dispatch to nodes and the randomness
beacon that draws them (docs/coordinator.md, "Nodes")."""
