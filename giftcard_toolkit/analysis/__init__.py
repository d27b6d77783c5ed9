"""What analysts use: frames (schemas, fetch, files, the local dataset), analytics, plots."""
