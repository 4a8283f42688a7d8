"""Conference stations: role configurations, role factories, the process supervisor."""
