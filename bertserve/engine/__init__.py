"""The layer every task stands on: the engine contract, the batcher that serves any engine, and metrics."""
