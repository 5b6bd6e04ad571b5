"""The command side: HTTP commands that register and manage devices."""
