"""The model server: one TorchScript bundle behind raw ASGI: micro-batching, metrics, hot swap."""
