"""Stand-ins for guest components this machine does not have, each doing what the upstream one does."""
