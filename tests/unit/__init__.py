"""Pure tests: the API, the engine, the builders and the local executor's bookkeeping."""
