"""Label Studio: the server process, inspection projects from config, annotators and imports."""
