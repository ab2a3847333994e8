"""Pure numpy: batching, padding and scoring. No runtime, no asyncio, no clock of its own, no files."""
