"""foundry-watch alerts package."""
