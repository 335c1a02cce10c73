"""POS terminal simulator, load generator and the end-to-end demo: a client of the switch, like a real terminal."""
