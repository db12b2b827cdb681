"""foundry-watch models package."""
