"""Sources: the relay watching a game's own database for registrations and milestones."""
