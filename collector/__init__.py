"""foundry-watch collector package."""
