"""What leaves the project for other systems: published versions' answers written where their
users already look (Flagsmith's own tables)."""
