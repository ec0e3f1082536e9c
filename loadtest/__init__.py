"""``iotp loadtest``: drive the running pipeline at fixed or stepped rates and measure every stage."""
