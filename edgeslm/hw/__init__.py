"""The edge of the world: GPIO pins, audio capture and time, each with a fake for tests."""
