"""The umbrella ``iotp`` command: a leaf package that imports every component (nothing imports it)."""
