"""The client at the instrument."""
