"""The edge of the world: GPIO pins, audio capture, power and thermal sensors, each with a fake for tests."""
