"""Shipping a model: ONNX export with parity, signed publish to a remote, and verification."""
