"""ONNX inference: the service that schedules, checks and logs a request, and its routes
(docs/coordinator.md, "Inference")."""
