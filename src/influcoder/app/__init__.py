"""The user-facing applications: the command line and the explorer (serve + static page)."""
