"""foundry-watch emulator package."""
