"""foundry-watch dashboard package."""
