"""The operations console: server-rendered pages for a programme's operators (console/README.md)."""
