"""Disputes, ONNX and LLM: admission, the bisection game, its parties and routes
(docs/verification.md, "Disputes")."""
