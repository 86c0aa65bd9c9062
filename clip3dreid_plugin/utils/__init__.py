"""Small runtime utilities (progress bars, logging set-up, seeding, device choice)."""
